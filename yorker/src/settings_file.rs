//! The settings file (`--config FILE`, TOML): `flag-name = value` for any flag of the command,
//! with the same names and the same validation as the flags. Precedence: file < environment
//! (`YORKER_*`) < flags. It works by handing each setting of the file to the flag's environment
//! variable when the environment does not set it already, before the command line is parsed,
//! so every value, whatever its source, goes through the one parser and
//! `ServerConfig::validate`.

use std::ffi::OsString;
use std::path::PathBuf;

/// The `--config` file named on the command line (`--config F` or `--config=F`), or by
/// `YORKER_CONFIG`.
pub fn config_path(args: &[OsString]) -> Option<PathBuf> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        if s == "--config" {
            return it.next().map(PathBuf::from);
        }
        if let Some(v) = s.strip_prefix("--config=") {
            return Some(PathBuf::from(v));
        }
    }
    std::env::var_os("YORKER_CONFIG").map(PathBuf::from)
}

/// Reads `path` and returns `(environment variable, value)` for each setting, checked against
/// the flags of `cmd` (the subcommand being run): an unknown key, a nested table or an
/// unreadable file is an error naming the file and the key.
pub fn read(path: &std::path::Path, cmd: &clap::Command) -> Result<Vec<(String, String)>, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("--config {}: {e}", path.display()))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e| format!("--config {}: {e}", path.display()))?;
    let mut out = Vec::new();
    for (key, value) in table {
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(key.as_str()))
            .filter(|_| key != "config" && key != "help")
            .ok_or_else(|| {
                format!(
                    "--config {}: unknown setting {key:?} (settings are the long flags of `yorker {}`, without the dashes)",
                    path.display(),
                    cmd.get_name()
                )
            })?;
        let env = arg
            .get_env()
            .ok_or_else(|| {
                format!(
                    "--config {}: {key:?} cannot be set from a file",
                    path.display()
                )
            })?
            .to_string_lossy()
            .into_owned();
        let v = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Array(a) => a
                .iter()
                .map(|v| match v {
                    toml::Value::String(s) => Ok(s.clone()),
                    toml::Value::Integer(i) => Ok(i.to_string()),
                    _ => Err(format!(
                        "--config {}: {key:?}: list items must be strings or integers",
                        path.display()
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?
                .join(","),
            _ => {
                return Err(format!(
                    "--config {}: {key:?} must be a string, number, boolean or list",
                    path.display()
                ))
            }
        };
        out.push((env, v));
    }
    Ok(out)
}

/// Applies the file's settings to the environment where it does not set them already (so the
/// environment, and then the flags, override the file). Call before any thread starts.
pub fn apply(settings: Vec<(String, String)>) {
    for (env, v) in settings {
        if std::env::var_os(&env).is_none() {
            std::env::set_var(env, v);
        }
    }
}

/// Setting names whose values `check-config` does not print.
pub const SECRETS: &[&str] = &["publisher-key", "relay-key", "backend-key", "upstream-key"];

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, Command};

    fn cmd() -> Command {
        Command::new("serve")
            .arg(
                Arg::new("max-frame")
                    .long("max-frame")
                    .env("YORKER_T_MAX_FRAME"),
            )
            .arg(Arg::new("jwt-key").long("jwt-key").env("YORKER_T_JWT"))
            .arg(Arg::new("config").long("config").env("YORKER_T_CONFIG"))
    }

    fn file(text: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!(
            "yorker-settings-{}-{:?}.toml",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn settings_become_environment_variables() {
        let p = file("max-frame = 8192\njwt-key = [\"a=/k/a.pem\", \"b=/k/b.pem\"]\n");
        let s = read(&p, &cmd()).unwrap();
        assert!(s.contains(&("YORKER_T_MAX_FRAME".into(), "8192".into())));
        assert!(s.contains(&("YORKER_T_JWT".into(), "a=/k/a.pem,b=/k/b.pem".into())));
    }

    #[test]
    fn unknown_keys_and_bad_files_are_one_clear_error() {
        let e = read(&file("max-frames = 1\n"), &cmd()).unwrap_err();
        assert!(e.contains("unknown setting \"max-frames\""), "{e}");
        let e = read(&file("config = \"x\"\n"), &cmd()).unwrap_err();
        assert!(e.contains("unknown setting"), "{e}");
        let e = read(&file("max-frame = \n"), &cmd()).unwrap_err();
        assert!(e.starts_with("--config "), "{e}");
        assert!(!e.contains('\n') || e.lines().count() < 8, "{e}");
        let e = read(std::path::Path::new("/nonexistent/y.toml"), &cmd()).unwrap_err();
        assert!(e.contains("/nonexistent/y.toml"), "{e}");
    }

    #[test]
    fn the_config_flag_is_found() {
        let a: Vec<OsString> = ["yorker", "serve", "--config", "/etc/y.toml"]
            .iter()
            .map(OsString::from)
            .collect();
        assert_eq!(config_path(&a), Some(PathBuf::from("/etc/y.toml")));
        let a: Vec<OsString> = ["yorker", "serve", "--config=/x.toml"]
            .iter()
            .map(OsString::from)
            .collect();
        assert_eq!(config_path(&a), Some(PathBuf::from("/x.toml")));
    }
}
