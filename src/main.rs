//! The `wxdispatch` binary: parse the command line and hand over to the library.

use wxdispatch::cli::Command;

#[tokio::main]
async fn main() {
    let cli = wxdispatch::cli::parse();
    let result = match cli.command {
        Command::Run => wxdispatch::app::run(cli.config.as_deref()).await,
        Command::MockWechat(args) => {
            wxdispatch::app::mock_wechat(cli.config.as_deref(), args).await
        }
        Command::Templates { appid } => {
            wxdispatch::app::templates(cli.config.as_deref(), appid.as_deref()).await
        }
        Command::Demo(args) => wxdispatch::demo::run(cli.config.as_deref(), args).await,
        Command::Bench(args) => wxdispatch::bench::run(cli.config.as_deref(), args).await,
        Command::BenchFloor { floor } => wxdispatch::bench::floor::run(floor).await,
        Command::CheckConfig { list_keys: true } => {
            println!("{}", wxdispatch::config::env_keys().join("\n"));
            Ok(())
        }
        Command::CheckConfig { list_keys: false } => {
            wxdispatch::app::check_config(cli.config.as_deref())
        }
        Command::Completions { shell } => {
            wxdispatch::cli::completions(shell, &mut std::io::stdout());
            Ok(())
        }
        Command::Publish(args) => {
            match wxdispatch::publish::command(cli.config.as_deref(), args).await {
                Ok(0) => Ok(()),
                Ok(code) => std::process::exit(code),
                Err(e) => Err(e),
            }
        }
    };
    if let Err(e) = result {
        eprintln!("wxdispatch: {e:#}");
        std::process::exit(1);
    }
}
