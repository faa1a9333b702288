//! The `kt` binary: a thin shell around [`keeptrusts::cli`].

/// mimalloc rather than the system allocator: every exchange allocates and
/// frees a few dozen small buffers (events, headers, body frames), and
/// glibc's bins made that about 2 µs of the 25 µs kt spent per request at
/// 32 connections. Built without transparent huge pages, which would
/// otherwise round its arenas up to 2 MiB pages and add megabytes of RSS
/// to an idle gateway.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    keeptrusts::cli::main()
}
