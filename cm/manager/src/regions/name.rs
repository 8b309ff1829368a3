//! [`RegionName`]: a region's name, checked once, so it is always safe as a file name.

use super::error::RegionError;
use std::fmt;

/// Longest region name, in bytes.
pub const MAX_REGION_NAME: usize = 64;

/// A region's name: 1..=64 of `[A-Za-z0-9_.-]`, not starting with `.` (so neither `.`, `..`
/// nor a hidden file). It becomes the file `<name>.region` in `[regions] dir`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RegionName(String);

impl RegionName {
    /// Checks `name`.
    pub fn new(name: &str) -> Result<Self, RegionError> {
        let bad = |reason| {
            Err(RegionError::BadName {
                name: name.chars().take(2 * MAX_REGION_NAME).collect(),
                reason,
            })
        };
        if name.is_empty() {
            return bad("empty");
        }
        if name.len() > MAX_REGION_NAME {
            return bad("longer than 64 bytes");
        }
        if name.starts_with('.') {
            return bad("starts with '.'");
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        {
            return bad("only A-Z, a-z, 0-9, '_', '.' and '-' are allowed");
        }
        Ok(RegionName(name.to_string()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Its file name in the regions directory.
    pub fn file_name(&self) -> String {
        format!("{}.region", self.0)
    }
}

impl fmt::Display for RegionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn good_names_become_region_files() {
        for n in ["nvram", "log-0", "a.b_c", &"x".repeat(64)] {
            let name = RegionName::new(n).unwrap();
            assert_eq!(name.file_name(), format!("{n}.region"));
        }
    }

    #[test]
    fn names_that_could_leave_the_directory_or_hide_are_refused() {
        for n in [
            "",
            ".",
            "..",
            ".hidden",
            "a/b",
            "../x",
            "a b",
            "é",
            &"x".repeat(65),
            "a\0b",
        ] {
            assert!(
                matches!(RegionName::new(n), Err(RegionError::BadName { .. })),
                "{n:?} accepted"
            );
        }
    }
}
