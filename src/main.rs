//! The `kt` binary: a thin shell around [`keeptrusts::cli`].

fn main() -> std::process::ExitCode {
    keeptrusts::cli::main()
}
