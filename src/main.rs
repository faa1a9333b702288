//! The `kt` binary: a thin shell around [`keeptrusts::cli`].

/// mimalloc rather than the system allocator: every exchange allocates and
/// frees a few dozen small buffers (events, headers, body frames), and
/// with glibc's bins that cost about 0.8 µs more of the 24 µs kt spent per
/// request at 32 connections (README, Performance). Built without
/// transparent huge pages, which would otherwise round its arenas up to
/// 2 MiB pages and add megabytes of RSS to an idle gateway.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    keeptrusts::cli::main()
}
