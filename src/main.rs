//! The `wxdispatch` binary: parse the command line and hand over to the library.

#[tokio::main]
async fn main() {
    match wxdispatch::cli::execute(wxdispatch::cli::parse()).await {
        Ok(0) => {}
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("wxdispatch: {e:#}");
            std::process::exit(1);
        }
    }
}
