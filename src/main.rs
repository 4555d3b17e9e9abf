//! memring binary: parse the command line, set up logging, run.

fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    match memring::config::parse_args(args) {
        Ok(_cfg) => {}
        Err(e) => {
            if e.code == 0 {
                println!("{e}");
            } else {
                eprintln!("memring: {e}");
            }
            std::process::exit(e.code);
        }
    }
}
