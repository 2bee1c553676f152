//! Formatting for people: sizes, ages, timestamps, aligned tables; and base64 for JSON payloads.

use std::io::{self, Write};
use std::time::Duration;

/// `1536` → `1.5 KiB`; bytes below 1 KiB are shown exactly.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// A duration in the largest unit that keeps it readable: `850 ms`, `12.3 s`, `4 min 5 s`,
/// `3 h 20 min`, `2 d 4 h`.
pub fn age(duration: Duration) -> String {
    let ms = duration.as_millis();
    let secs = duration.as_secs();
    match secs {
        0 => format!("{ms} ms"),
        1..=59 => format!("{:.1} s", duration.as_secs_f64()),
        60..=3599 => format!("{} min {} s", secs / 60, secs % 60),
        3600..=86_399 => format!("{} h {} min", secs / 3600, secs % 3600 / 60),
        _ => format!("{} d {} h", secs / 86_400, secs % 86_400 / 3600),
    }
}

/// Microseconds since the Unix epoch as RFC 3339 in UTC: `2026-11-26T04:43:21.123456Z`.
pub fn timestamp(micros: u64) -> String {
    let secs = micros / 1_000_000;
    let days = secs / 86_400;
    let rest = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60,
        micros % 1_000_000
    )
}

/// Days since 1970-01-01 to a (year, month, day) date; Howard Hinnant's algorithm.
fn civil_from_days(days: u64) -> (i64, u32, u32) {
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Standard base64 with padding.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk.first().copied().unwrap_or(0),
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for index in 0..4 {
            if index <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * index)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Rows printed with every column padded to its widest cell; the last column is not padded.
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Table {
            rows: vec![header.iter().map(|cell| cell.to_string()).collect()],
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn print(&self, out: &mut impl Write) -> io::Result<()> {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|column| {
                self.rows
                    .iter()
                    .filter_map(|row| row.get(column))
                    .map(|cell| cell.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for row in &self.rows {
            let mut line = String::new();
            for (column, cell) in row.iter().enumerate() {
                if column + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    let width = widths.get(column).copied().unwrap_or(0);
                    line.push_str(&format!("{cell:<width$}  "));
                }
            }
            writeln!(out, "{}", line.trim_end())?;
        }
        Ok(())
    }
}

/// Text for a terminal that shows bytes instead of obeying them: control characters (C0, DEL,
/// C1), the bidirectional overrides that reorder what is shown, and bytes that are not UTF-8
/// are written as escapes (`\x1b`, `\n`, `\u{202e}`), a backslash as `\\`; everything else as
/// it is. With `keep_newlines`, `\n` passes (the line structure of our own output).
pub fn escape(bytes: &[u8], keep_newlines: bool) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\n' if keep_newlines => out.push('\n'),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if (c as u32) < 0x80 && c.is_control() => {
                    out.push_str(&format!("\\x{:02x}", c as u32))
                }
                c if c.is_control() || is_bidi_control(c) => {
                    out.push_str(&format!("\\u{{{:x}}}", c as u32))
                }
                c => out.push(c),
            }
        }
        for byte in chunk.invalid() {
            out.push_str(&format!("\\x{byte:02x}"));
        }
    }
    out
}

/// Characters that reorder the text around them on screen (Unicode's explicit embeddings,
/// overrides and isolates, and the implicit marks).
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Standard output for people: on a terminal, everything written passes through [`escape`]
/// (newlines kept), so that a payload or a file name cannot move the cursor, retitle the window
/// or forge a hyperlink; into a pipe or file, bytes pass as they are (scripts rely on them).
pub struct Output<W: Write> {
    inner: W,
    terminal: bool,
}

impl<W: Write> Output<W> {
    /// Wraps `inner`; `terminal` says whether it is a terminal.
    pub fn new(inner: W, terminal: bool) -> Self {
        Output { inner, terminal }
    }

    /// Writes a record's payload: as it is into a pipe; on a terminal escaped, its own
    /// newlines included, so that one record stays one line.
    pub fn write_payload(&mut self, payload: &[u8]) -> io::Result<()> {
        match self.terminal {
            true => self.inner.write_all(escape(payload, false).as_bytes()),
            false => self.inner.write_all(payload),
        }
    }
}

/// Standard output, escaped when it is a terminal.
pub fn stdout() -> Output<io::StdoutLock<'static>> {
    use std::io::IsTerminal;
    let stdout = io::stdout();
    let terminal = stdout.is_terminal();
    Output::new(stdout.lock(), terminal)
}

/// Like [`stdout`], buffered: for long listings.
pub fn buffered_stdout() -> Output<io::BufWriter<io::StdoutLock<'static>>> {
    use std::io::IsTerminal;
    let stdout = io::stdout();
    let terminal = stdout.is_terminal();
    Output::new(io::BufWriter::new(stdout.lock()), terminal)
}

impl<W: Write> Write for Output<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !self.terminal {
            return self.inner.write(buf);
        }
        self.inner.write_all(escape(buf, true).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_use_binary_units() {
        assert_eq!(size(1023), "1023 B");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(5 << 20), "5.0 MiB");
        assert_eq!(size(3 << 30), "3.0 GiB");
    }

    #[test]
    fn ages_pick_a_readable_unit() {
        assert_eq!(age(Duration::from_millis(850)), "850 ms");
        assert_eq!(age(Duration::from_secs(245)), "4 min 5 s");
        assert_eq!(age(Duration::from_secs(2 * 86_400 + 4 * 3600)), "2 d 4 h");
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(timestamp(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            timestamp(1_700_000_000_123_456),
            "2023-11-14T22:13:20.123456Z"
        );
        assert_eq!(
            timestamp(951_782_400_000_000),
            "2000-02-29T00:00:00.000000Z"
        );
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (input, expected) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), expected);
        }
    }

    #[test]
    fn escape_shows_control_sequences_instead_of_sending_them() {
        let hostile = b"ok \x1b]0;owned\x07\x1b[2J\n\\ \xc2\x9b \xe2\x80\xae \xff";
        let shown = escape(hostile, false);
        assert_eq!(
            shown,
            r"ok \x1b]0;owned\x07\x1b[2J\n\\ \u{9b} \u{202e} \xff"
        );
        assert!(!shown.bytes().any(|byte| byte < 0x20 || byte == 0x7f));
        assert_eq!(escape(b"line\n", true), "line\n");
        assert_eq!(escape("naïve 日本\t".as_bytes(), true), r"naïve 日本\t");
    }

    #[test]
    fn output_escapes_only_on_a_terminal() {
        let mut piped = Output::new(Vec::new(), false);
        piped.write_all(b"\x1b[2J\n").unwrap();
        assert_eq!(piped.inner, b"\x1b[2J\n");
        let mut shown = Output::new(Vec::new(), true);
        shown.write_all(b"\x1b[2J\n").unwrap();
        assert_eq!(shown.inner, b"\\x1b[2J\n");
    }
}
