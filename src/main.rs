fn main() -> std::process::ExitCode {
    stratus::cli::main()
}
