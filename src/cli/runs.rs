//! The kept runs (`run --keep`): `pysandbox ps` and `inspect ID` print what
//! `pysandbox::runs` lists.

use anyhow::Result;

pub(super) fn ps() -> Result<i32> {
    println!(
        "{:<20} {:<28} {:<20} {:<14} {:>10}",
        "ID", "IMAGE", "ENDED (UTC)", "STATUS", "SIZE"
    );
    for r in pysandbox::runs::list()? {
        println!(
            "{:<20} {:<28} {:<20} {:<14} {:>10}",
            r.id,
            r.image,
            utc(r.ended),
            r.status,
            r.bytes
        );
    }
    Ok(0)
}

pub(super) fn inspect(id: &str) -> Result<i32> {
    for (path, bytes, dir) in pysandbox::runs::contents(id)? {
        if dir {
            println!("{path}/");
        } else {
            println!("{path} ({bytes} B)");
        }
    }
    Ok(0)
}

/// Unix time as `YYYY-MM-DD HH:MM:SS` (UTC).
fn utc(t: u64) -> String {
    let (days, secs) = (t / 86400, t % 86400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}
