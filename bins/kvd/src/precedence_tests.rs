//! Precedence, for every setting, generated from the one definition: for each option clap knows
//! (flag and env variable) and its config file key, a flag beats its env variable, which beats
//! the file, which beats the default; and a flag, an env value and a file value of the same text
//! mean the same thing. Also the naming rule the docs promise: key = field, flag = key with
//! `-`, env = `KVD_` + key in capitals.

use std::sync::Mutex;

use clap::{CommandFactory, Parser};

use crate::cli::Cli;
use crate::config::{resolve, Sources};
use crate::settings::{merge, Settings};

/// Clap reads the process environment: tests that set it or parse take this lock.
static ENVIRONMENT: Mutex<()> = Mutex::new(());

/// Three values for a setting of this value name — for the flag, the env variable and the file
/// — each valid, and neighbours different. The file's form is TOML.
#[rustfmt::skip]
fn samples(value_name: &str) -> [(&'static str, &'static str); 3] {
    match value_name {
        "ADDR" => [("127.0.0.1:1", "\"127.0.0.1:1\""), ("127.0.0.1:2", "\"127.0.0.1:2\""), ("127.0.0.1:3", "\"127.0.0.1:3\"")],
        "DIR" => [("/flag", "\"/flag\""), ("/env", "\"/env\""), ("/file", "\"/file\"")],
        "BYTES" => [("1MiB", "\"1MiB\""), ("2K", "\"2K\""), ("3145728", "3145728")],
        "N" => [("2", "2"), ("3", "3"), ("4", "4")],
        "MS" => [("100", "100"), ("200", "200"), ("300", "300")],
        "SECS" => [("10", "10"), ("20", "20"), ("30", "30")],
        "POLICY" => [("always", "\"always\""), ("never", "\"never\""), ("interval:7", "\"interval:7\"")],
        "MODE" => [("strict", "\"strict\""), ("point-in-time", "\"point-in-time\""), ("skip-corrupt", "\"skip-corrupt\"")],
        "CODEC" => [("lz4", "\"lz4\""), ("zstd", "\"zstd\""), ("none", "\"none\"")],
        "LEVEL" => [("debug", "\"debug\""), ("warn", "\"warn\""), ("error", "\"error\"")],
        "FORMAT" => [("json", "\"json\""), ("text", "\"text\""), ("json", "\"json\"")],
        "URL" => [("http://flag:1", "\"http://flag:1\""), ("http://env:2", "\"http://env:2\""), ("http://file:3", "\"http://file:3\"")],
        other => panic!("no sample values for value name {other}: add them here"),
    }
}

/// A setting as clap knows it.
struct Setting {
    key: String,
    flag: String,
    env: String,
    value_name: String,
}

/// Every option of `kvd follower` (which takes all of them) that is a setting.
fn settings_in_the_cli() -> Vec<Setting> {
    let command = Cli::command();
    let follower = command
        .find_subcommand("follower")
        .expect("follower subcommand");
    follower
        .get_arguments()
        .filter(|arg| Settings::keys().contains(&arg.get_id().as_str()))
        .map(|arg| Setting {
            key: arg.get_id().to_string(),
            flag: format!("--{}", arg.get_long().expect("long flag")),
            env: arg
                .get_env()
                .expect("env variable")
                .to_string_lossy()
                .into_owned(),
            value_name: arg.get_value_names().expect("value name")[0].to_string(),
        })
        .collect()
}

/// The command line's layer for `kvd follower 1 ARGS` with `env` set (and every other
/// setting's env variable unset).
fn command_line(args: &[&str], env: Option<(&str, &str)>) -> Settings {
    for setting in settings_in_the_cli() {
        std::env::remove_var(&setting.env);
    }
    if let Some((name, value)) = env {
        std::env::set_var(name, value);
    }
    let argv = ["kvd", "follower", "1"]
        .into_iter()
        .chain(args.iter().copied());
    let parsed = Cli::try_parse_from(argv);
    if let Some((name, _)) = env {
        std::env::remove_var(name);
    }
    let parsed = parsed.unwrap_or_else(|error| panic!("{args:?} {env:?}: {error}"));
    parsed.command.into_invocation().command_line
}

#[test]
fn every_setting_has_a_flag_an_env_variable_and_a_file_key_named_alike() {
    let in_cli = settings_in_the_cli();
    let keys = Settings::keys();
    assert_eq!(
        in_cli.len(),
        keys.len(),
        "every setting is an option of `kvd follower`"
    );
    for setting in &in_cli {
        assert_eq!(setting.flag, format!("--{}", setting.key.replace('_', "-")));
        assert_eq!(setting.env, format!("KVD_{}", setting.key.to_uppercase()));
    }
    // And nothing else is an option, but the config file itself.
    let command = Cli::command();
    for subcommand in ["leader", "follower"] {
        let options = command.find_subcommand(subcommand).unwrap().get_arguments();
        for arg in options.filter(|arg| arg.get_long().is_some()) {
            let id = arg.get_id().as_str();
            assert!(
                keys.contains(&id) || ["config", "help"].contains(&id),
                "{subcommand} --{id} is not a setting"
            );
        }
    }
}

#[test]
fn for_every_setting_a_flag_beats_env_beats_the_file_beats_the_default() {
    let _environment = ENVIRONMENT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let settings = settings_in_the_cli();
    assert!(
        settings.len() >= 26,
        "only {} settings found",
        settings.len()
    );
    for setting in settings {
        let key = setting.key.as_str();
        let [(flag, _), (env, _), (file_as_flag, file)] = samples(&setting.value_name);
        let given_as_flag = |text: &str| command_line(&[&setting.flag, text], None).value_text(key);
        let (flag_value, env_value, file_value) = (
            given_as_flag(flag),
            given_as_flag(env),
            given_as_flag(file_as_flag),
        );
        assert!(flag_value.is_some() && flag_value != env_value && env_value != file_value);

        let file_layer = Settings::from_toml(&format!("{key} = {file}"))
            .unwrap_or_else(|error| panic!("{key}: {error}"));
        assert_eq!(
            file_layer.value_text(key),
            file_value,
            "{key}: file and flag read alike"
        );
        let env_layer = command_line(&[], Some((&setting.env, env)));
        assert_eq!(
            env_layer.value_text(key),
            env_value,
            "{key}: env and flag read alike"
        );
        let flag_and_env = command_line(&[&setting.flag, flag], Some((&setting.env, env)));

        let cases = [
            (
                "flag, env, file",
                flag_and_env,
                file_layer.clone(),
                &flag_value,
            ),
            ("env, file", env_layer, file_layer.clone(), &env_value),
            ("file", Settings::default(), file_layer, &file_value),
            ("nothing", Settings::default(), Settings::default(), &None),
        ];
        for (given, command_line, file, expected) in cases {
            let merged = merge([command_line, Settings::default(), file]);
            assert_eq!(&merged.value_text(key), expected, "{key} given as {given}");
        }
    }
}

#[test]
fn max_segment_size_sits_between_kvd_max_segment_size_and_the_file() {
    let _environment = ENVIRONMENT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let file_dir = tempfile::tempdir().unwrap();
    let file = file_dir.path().join("kvd.toml");
    std::fs::write(&file, "max_segment_size = \"1K\"").unwrap();
    let segment_bytes_max = |args: &[&str], kvd_env: Option<&str>, compat_env: Option<&str>| {
        let command_line = command_line(args, kvd_env.map(|value| ("KVD_MAX_SEGMENT_SIZE", value)));
        let sources = Sources {
            command_line,
            max_segment_size_env: compat_env.map(str::to_owned),
            config_file: Some(file.clone()),
        };
        resolve(Some("1"), sources).unwrap().segment_bytes_max
    };
    let flag = ["--max-segment-size", "4K"];
    assert_eq!(segment_bytes_max(&flag, Some("3K"), Some("2K")), 4096);
    assert_eq!(segment_bytes_max(&[], Some("3K"), Some("2K")), 3072);
    assert_eq!(segment_bytes_max(&[], None, Some("2K")), 2048);
    assert_eq!(segment_bytes_max(&[], None, None), 1024);
}
