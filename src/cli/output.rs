//! Everything the command line prints on standard output goes through [`outln!`], which returns
//! the write error instead of panicking as `println!` does. A closed pipe
//! (`isoclip inspect p | head -1`) then surfaces as an `Error::Io` of kind `BrokenPipe` on
//! [`STDOUT`], which `cli::main` turns into a quiet success, as ripgrep does. (Rust ignores
//! SIGPIPE, so a closed pipe arrives as EPIPE on the next write.)
//!
//! Also the small wording helpers shared by the commands' human output.

use std::io::Write;

use isoclip::error::{Error, Result};

/// The name standard output gets in an error.
pub const STDOUT: &str = "standard output";

/// Writes one formatted line to standard output; used through [`outln!`].
pub fn write_line(args: std::fmt::Arguments<'_>) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_fmt(args)
        .and_then(|()| out.write_all(b"\n"))
        .map_err(|e| Error::io(STDOUT, e))
}

/// Flushes standard output (at the end of a command).
pub fn flush() -> Result<()> {
    std::io::stdout().flush().map_err(|e| Error::io(STDOUT, e))
}

/// Whether `e` is standard output having been closed by its reader.
pub fn is_broken_pipe(e: &Error) -> bool {
    match e.root() {
        Error::Io { path, source } => {
            path.as_os_str() == STDOUT && source.kind() == std::io::ErrorKind::BrokenPipe
        }
        _ => false,
    }
}

/// `println!` that returns `Result<(), Error>` instead of panicking when stdout is closed.
macro_rules! outln {
    () => {
        $crate::cli::output::write_line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::cli::output::write_line(format_args!($($arg)*))
    };
}

/// "1 shard", "4 shards": a count with its noun in the right number.
pub fn count(n: u64, singular: &str, plural: &str) -> String {
    format!("{n} {}", if n == 1 { singular } else { plural })
}

/// A rate rounded for people: "125,354", "87.5", "0.25" (3 significant digits below 1000,
/// whole numbers with thousands separators above).
pub fn human_rate(v: f64) -> String {
    if !v.is_finite() || v < 0.0 {
        return "-".into();
    }
    if v >= 999.5 {
        let digits = format!("{:.0}", v);
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        out
    } else if v >= 99.95 {
        format!("{v:.0}")
    } else if v >= 9.995 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_agree_in_number() {
        assert_eq!(count(1, "shard", "shards"), "1 shard");
        assert_eq!(count(0, "shard", "shards"), "0 shards");
        assert_eq!(count(4, "band", "bands"), "4 bands");
    }

    #[test]
    fn rates_are_rounded_for_people() {
        assert_eq!(human_rate(125_353.591_3), "125,354");
        assert_eq!(human_rate(1_000.0), "1,000");
        assert_eq!(human_rate(999.4), "999");
        assert_eq!(human_rate(87.46), "87.5");
        assert_eq!(human_rate(0.2512), "0.25");
        assert_eq!(human_rate(12_345_678.0), "12,345,678");
    }

    #[test]
    fn only_a_closed_stdout_is_a_broken_pipe() {
        let pipe = || std::io::Error::from(std::io::ErrorKind::BrokenPipe);
        assert!(is_broken_pipe(&Error::io(STDOUT, pipe())));
        assert!(!is_broken_pipe(&Error::io("/data/out.npy", pipe())));
        assert!(!is_broken_pipe(&Error::io(
            STDOUT,
            std::io::Error::from(std::io::ErrorKind::StorageFull)
        )));
    }
}
