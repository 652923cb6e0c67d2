//! `pysandbox setup apparmor`: the profile it writes parses with AppArmor's own parser
//! (`apparmor_parser -Q`: parse and compile, load nothing), and a profile with a broken
//! rule does not (so the parser really read it). The `userns,` rule needs AppArmor 4.0+
//! (Debian 12 ships 3.0.8): CI points PYSANDBOX_APPARMOR_PARSER at Debian 13's parser
//! (see .ci/apparmor-parser.sh). What this cannot show here: the profile taking effect
//! on a kernel with `kernel.apparmor_restrict_unprivileged_userns=1` (Ubuntu's).

mod common;

use std::process::Command;

use common::*;

/// The parser command (a wrapper script in CI), or why there is none good enough.
fn parser() -> Result<Vec<String>, String> {
    let cmd = std::env::var("PYSANDBOX_APPARMOR_PARSER").unwrap_or("apparmor_parser".into());
    let argv: Vec<String> = cmd.split_whitespace().map(str::to_string).collect();
    let v = Command::new(&argv[0])
        .args(&argv[1..])
        .arg("--version")
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    let text = String::from_utf8_lossy(&v.stdout).into_owned();
    let version = text
        .split_whitespace()
        .find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()))
        .unwrap_or("0");
    let major: u32 = version
        .split('.')
        .next()
        .unwrap_or("0")
        .parse()
        .unwrap_or(0);
    if major < 4 {
        return Err(format!(
            "{cmd} is AppArmor {version}; the `userns,` rule needs 4.0+ (set PYSANDBOX_APPARMOR_PARSER)"
        ));
    }
    Ok(argv)
}

fn parses(argv: &[String], profile: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("pysandbox");
    std::fs::write(&f, profile).unwrap();
    let o = Command::new(&argv[0])
        .args(&argv[1..])
        .args(["-Q", "-K"])
        .arg(&f)
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn the_profile_parses_and_a_broken_one_does_not() {
    let argv = match parser() {
        Ok(a) => a,
        Err(why) if must_work() => panic!("{why} (PYSANDBOX_MUST_WORK=1)"),
        Err(why) => {
            eprintln!("SKIP: {why}");
            return;
        }
    };
    let o = Command::new(bin())
        .args(["setup", "apparmor", "--print"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let profile = String::from_utf8(o.stdout).unwrap();
    assert!(profile.contains("\n  userns,\n"), "{profile}");
    assert!(
        profile.contains(&format!("\"{}\"", bin().display())),
        "{profile}"
    );
    let (ok, err) = parses(&argv, &profile);
    assert!(ok, "the profile does not parse: {err}\n{profile}");
    let (ok, _) = parses(&argv, &profile.replace("userns,", "usernz,"));
    assert!(
        !ok,
        "the parser accepted a broken rule: it did not read the profile"
    );
}

#[test]
fn setup_apparmor_refuses_ordinary_users_in_one_line() {
    if !available(Who::User) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut c = Command::new(as_user()[0].clone());
    c.args(&as_user()[1..])
        .arg(bin())
        .args(["setup", "apparmor", "--dir"])
        .arg(dir.path());
    let o = c.output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(125), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("must run as root"), "{err}");
    assert!(!dir.path().join("pysandbox").exists());
}
