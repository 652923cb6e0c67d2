//! The interpreter's command line and environment: what the script starts with.

use super::RunCtx;
use crate::policy::RunPolicy;
use crate::policy::Script;
use crate::spec;

/// The environment every script starts with (nothing of the caller's leaks in).
pub const BASE_ENV: &[(&str, &str)] = &[
    ("PATH", "/opt/conda/bin:/usr/local/bin:/usr/bin:/bin"),
    ("HOME", spec::HOME_DIR),
    ("USER", "mambauser"),
    ("LOGNAME", "mambauser"),
    ("LANG", "C.UTF-8"),
    ("PYTHONDONTWRITEBYTECODE", "1"),
];

/// Variables the image's config may not set: who the script is and where its home is are
/// pysandbox's (the unprivileged sandbox user, HOME on a tmpfs).
const FORCED_ENV: &[&str] = &["HOME", "USER", "LOGNAME"];

/// The script's environment: [`BASE_ENV`], then the image config's `Env` (its PATH,
/// PYTHONPATH, VIRTUAL_ENV, LD_LIBRARY_PATH...) except [`FORCED_ENV`], then the user's
/// `-e`. Each later one replaces an earlier variable of the same name.
fn environment(image: &[(String, String)], user: &[(String, String)]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = BASE_ENV
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let image = image
        .iter()
        .filter(|(k, _)| !FORCED_ENV.contains(&k.as_str()));
    for (k, v) in image.chain(user) {
        env.retain(|(ek, _)| ek != k);
        env.push((k.clone(), v.clone()));
    }
    env
}

/// The interpreter's command line and environment.
pub(super) fn command(r: &RunCtx) -> (Vec<String>, Vec<(String, String)>) {
    let mut argv = vec![r.image.python.clone()];
    if r.policy.interactive && r.policy.script != Script::Repl {
        argv.push("-i".into());
    }
    match (&r.policy.script, &r.inputs.script_in_sandbox) {
        (Script::Repl, _) => {}
        (Script::Code(code), _) => {
            argv.push("-c".into());
            argv.push(code.clone());
        }
        (_, Some(path)) => argv.push(path.clone()),
        (_, None) => unreachable!("a script file or source always has a path"),
    }
    argv.extend(r.policy.args.iter().cloned());
    // The proxy's variables come before the user's -e, which may replace them.
    let mut user_env = if proxied(r.policy) {
        crate::net::proxy::environment()
    } else {
        Vec::new()
    };
    user_env.extend(r.policy.env.iter().cloned());
    (argv, environment(&r.image.env, &user_env))
}

/// `--allow-net`: the sandbox reaches out only through pysandbox's proxy.
pub(super) fn proxied(policy: &RunPolicy) -> bool {
    !policy.allow_net.rules.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn image_env_under_the_users_and_over_the_base() {
        let image = kv(&[
            ("PATH", "/opt/venv/bin:/usr/bin"),
            ("VIRTUAL_ENV", "/opt/venv"),
            ("HOME", "/root"),
            ("USER", "root"),
        ]);
        let user = kv(&[("VIRTUAL_ENV", "/mine"), ("X", "1")]);
        let env = environment(&image, &user);
        let get = |k: &str| env.iter().find(|(ek, _)| ek == k).map(|(_, v)| v.as_str());
        assert_eq!(get("PATH"), Some("/opt/venv/bin:/usr/bin"));
        assert_eq!(get("VIRTUAL_ENV"), Some("/mine"));
        assert_eq!(get("X"), Some("1"));
        assert_eq!(get("HOME"), Some(spec::HOME_DIR));
        assert_eq!(get("USER"), Some("mambauser"));
        assert_eq!(get("LANG"), Some("C.UTF-8"));
        assert_eq!(env.iter().filter(|(k, _)| k == "PATH").count(), 1);
    }
}
