//! The `kt` binary: a thin shell around [`keeptrusts::cli`].

// glibc's allocator, on purpose: mimalloc took about 0.8 µs off a small
// request at 32 connections, but on 1 MiB bodies kt then spent about 30%
// more CPU, nearly all of it copying each TLS record into the buffer rustls
// allocates for it, and its peak RSS was 2 MB higher. README, Performance.

fn main() -> std::process::ExitCode {
    keeptrusts::cli::main()
}
