//! Version ranges with the semantics of Masterminds semver v3, as kubernetes-upgrader v0.6 used
//! them: x-ranges, comparisons, tilde, caret, hyphen ranges, `,` for AND and `||` for OR.
//!
//! [`cel_rule`] accepts exactly the strings [`VersionRange::parse`] accepts, so the API server
//! refuses a malformed range at admission and the controllers never meet one.

use std::fmt;

use semver::{Prerelease, Version};

use crate::version::{BUILD_IDENTIFIER, PRERELEASE_IDENTIFIER};

/// Largest accepted range, in bytes; also bounds the CEL rule's cost.
pub const MAX_LENGTH: usize = 256;

const PART: &str = "([0-9]+|[xX*])";
const OPERATOR: &str = "(!=|>=|=>|<=|=<|~>|[=><~^])";
/// White space between terms, as Go's `\s` (Masterminds splits on it): space, tab, newline,
/// form feed and carriage return.
const SPACE: &str = "[\\t\\n\\f\\r ]";
const SPACE_CHARS: [char; 5] = [' ', '\t', '\n', '\x0c', '\r'];

/// The regular expression (RE2 syntax) behind [`cel_rule`].
pub fn pattern() -> String {
    let pre = format!("{PRERELEASE_IDENTIFIER}([.]{PRERELEASE_IDENTIFIER})*");
    let build = format!("{BUILD_IDENTIFIER}([.]{BUILD_IDENTIFIER})*");
    let version = format!("v?{PART}([.]{PART}){{0,2}}(-{pre})?([+]{build})?");
    let term = format!("(({OPERATOR}{SPACE}*)?{version}|{version}{SPACE}+-{SPACE}+{version})");
    let group = format!("{SPACE}*{term}(({SPACE}*,{SPACE}*|{SPACE}+){term})*{SPACE}*");
    format!("^{group}([|][|]{group})*$")
}

/// The CEL expression that admission evaluates on every version range field. Backslashes are
/// escaped once more, so that CEL hands RE2 the escapes of [`pattern`] unchanged.
pub fn cel_rule() -> String {
    format!("self.matches('{}')", pattern().replace('\\', "\\\\"))
}

/// The message admission returns when [`cel_rule`] fails.
pub const CEL_MESSAGE: &str = "spec.versionRange must be a semver constraint such as v1.27.x, ~1.27, >=1.27.0 <1.29.0 or 1.26 - 1.27";

/// Why a range does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid version range {range:?}: {reason}")]
pub struct RangeError {
    range: String,
    reason: &'static str,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    Tilde,
    Caret,
}

/// A version with possibly missing or wildcard parts: `1`, `1.27`, `1.27.x`, `*`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Partial {
    major: Option<u64>,
    minor: Option<u64>,
    patch: Option<u64>,
    pre: Prerelease,
}

impl Partial {
    fn dirty(&self) -> bool {
        self.patch.is_none()
    }

    fn floor(&self) -> Version {
        let mut v = Version::new(
            self.major.unwrap_or(0),
            self.minor.unwrap_or(0),
            self.patch.unwrap_or(0),
        );
        v.pre = self.pre.clone();
        v
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Term {
    op: Op,
    version: Partial,
}

/// A parsed range: an OR of AND-groups of terms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionRange {
    groups: Vec<Vec<Term>>,
    source: String,
}

impl fmt::Display for VersionRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl std::str::FromStr for VersionRange {
    type Err = RangeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl VersionRange {
    /// Parses a range; the grammar is the one [`cel_rule`] checks.
    pub fn parse(range: &str) -> Result<Self, RangeError> {
        let fail = |reason| RangeError {
            range: range.to_owned(),
            reason,
        };
        if range.len() > MAX_LENGTH {
            return Err(fail("longer than 256 characters"));
        }
        let mut groups = Vec::new();
        for group in range.split("||") {
            groups.push(parse_group(group).map_err(fail)?);
        }
        Ok(Self {
            groups,
            source: range.to_owned(),
        })
    }

    /// Whether `version` satisfies the range.
    pub fn matches(&self, version: &Version) -> bool {
        self.groups
            .iter()
            .any(|g| g.iter().all(|t| t.matches(version)))
    }
}

fn parse_group(group: &str) -> Result<Vec<Term>, &'static str> {
    let tokens: Vec<&str> = group
        .split(',')
        .map(|t| t.trim_matches(SPACE_CHARS))
        .map(|t| {
            if t.is_empty() {
                Err("empty term")
            } else {
                Ok(t)
            }
        })
        .collect::<Result<_, _>>()?;
    let mut terms = Vec::new();
    for token in tokens {
        let words: Vec<&str> = token.split(SPACE_CHARS).filter(|w| !w.is_empty()).collect();
        let mut i = 0;
        while i < words.len() {
            if words.get(i + 1) == Some(&"-") {
                let upper = words
                    .get(i + 2)
                    .ok_or("hyphen range without an upper bound")?;
                terms.push(Term {
                    op: Op::Ge,
                    version: parse_partial(words[i])?,
                });
                terms.push(Term {
                    op: Op::Le,
                    version: parse_partial(upper)?,
                });
                i += 3;
                continue;
            }
            let (op, rest) = split_operator(words[i]);
            let (version, consumed) = if rest.is_empty() {
                (*words.get(i + 1).ok_or("operator without a version")?, 2)
            } else {
                (rest, 1)
            };
            terms.push(Term {
                op,
                version: parse_partial(version)?,
            });
            i += consumed;
        }
    }
    Ok(terms)
}

fn split_operator(word: &str) -> (Op, &str) {
    const OPS: [(&str, Op); 11] = [
        ("!=", Op::Ne),
        (">=", Op::Ge),
        ("=>", Op::Ge),
        ("<=", Op::Le),
        ("=<", Op::Le),
        ("~>", Op::Tilde),
        ("=", Op::Eq),
        (">", Op::Gt),
        ("<", Op::Lt),
        ("~", Op::Tilde),
        ("^", Op::Caret),
    ];
    OPS.iter()
        .find_map(|(text, op)| word.strip_prefix(text).map(|rest| (*op, rest)))
        .unwrap_or((Op::Eq, word))
}

fn valid_identifiers(s: &str) -> bool {
    !s.is_empty()
        && s.split('.')
            .all(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
}

/// Prerelease identifiers additionally refuse numeric identifiers with a leading zero.
fn valid_prerelease(s: &str) -> bool {
    valid_identifiers(s)
        && s.split('.').all(|id| {
            !(id.len() > 1 && id.starts_with('0') && id.bytes().all(|b| b.is_ascii_digit()))
        })
}

fn parse_partial(text: &str) -> Result<Partial, &'static str> {
    let text = text.strip_prefix('v').unwrap_or(text);
    let (core, build) = match text.split_once('+') {
        Some((core, build)) => (core, Some(build)),
        None => (text, None),
    };
    if build.is_some_and(|b| !valid_identifiers(b)) {
        return Err("malformed build metadata");
    }
    let (core, pre) = match core.split_once('-') {
        Some((core, pre)) => (core, Some(pre)),
        None => (core, None),
    };
    let pre = match pre {
        Some(p) if valid_prerelease(p) => Prerelease::new(p).map_err(|_| "malformed prerelease")?,
        Some(_) => return Err("malformed prerelease"),
        None => Prerelease::EMPTY,
    };
    let parts: Vec<&str> = core.split('.').collect();
    if parts.is_empty() || parts.len() > 3 {
        return Err("a version has one to three parts");
    }
    let mut numbers = [None; 3];
    let mut wildcard = false;
    for (slot, part) in numbers.iter_mut().zip(&parts) {
        match *part {
            "x" | "X" | "*" => wildcard = true,
            digits if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => {
                let n = digits
                    .parse::<u64>()
                    .map_err(|_| "version part too large")?;
                if !wildcard {
                    *slot = Some(n);
                }
            }
            _ => return Err("a version part must be a number or x, X or *"),
        }
    }
    Ok(Partial {
        major: numbers[0],
        minor: numbers[1],
        patch: numbers[2],
        pre,
    })
}

impl Term {
    fn matches(&self, v: &Version) -> bool {
        let c = &self.version;
        // A prerelease matches only a term that names one; an exact `!=` is the exception.
        let exact_not_equal = self.op == Op::Ne && !c.dirty();
        if !v.pre.is_empty() && c.pre.is_empty() && !exact_not_equal {
            return false;
        }
        let floor = c.floor();
        let cmp = v.cmp_precedence(&floor);
        match self.op {
            Op::Eq => {
                if c.dirty() {
                    in_x_range(c, v)
                } else {
                    cmp.is_eq()
                }
            }
            Op::Ne => not_equal(c, &floor, v),
            Op::Gt => match (c.major, c.minor, c.patch) {
                (_, _, Some(_)) => cmp.is_gt(),
                (None, _, _) => false,
                (Some(major), None, _) => v.major > major,
                (Some(major), Some(minor), None) => (v.major, v.minor) > (major, minor),
            },
            Op::Lt => cmp.is_lt(),
            Op::Ge => cmp.is_ge(),
            Op::Le => match (c.major, c.minor, c.patch) {
                (_, _, Some(_)) => cmp.is_le(),
                (None, _, _) => true,
                (Some(major), None, _) => v.major <= major,
                (Some(major), Some(minor), None) => (v.major, v.minor) <= (major, minor),
            },
            Op::Tilde => {
                // `~0.0.0`, all three parts given, accepts every version from 0.0.0 up.
                let from_zero = (c.major, c.minor, c.patch) == (Some(0), Some(0), Some(0));
                cmp.is_ge()
                    && (from_zero
                        || (c.major.is_none_or(|m| v.major == m)
                            && c.minor.is_none_or(|m| v.minor == m)))
            }
            Op::Caret => caret(c, &floor, v),
        }
    }
}

/// `!=` as Masterminds decides it. A partial constraint is compared part by part with its missing
/// parts read as 0: a missing minor equals every minor, and a missing patch equals every patch,
/// but then a prerelease on either side must also be equal. So `!=4.1-alpha` refuses 4.1.1-alpha
/// and accepts 4.1.0, and `!=*` refuses only 0.0.0.
fn not_equal(c: &Partial, floor: &Version, v: &Version) -> bool {
    if c.dirty() {
        if v.major != floor.major {
            return true;
        }
        let major_given = c.major.is_some();
        if major_given && c.minor.is_none() {
            return false;
        }
        if v.minor != floor.minor {
            return true;
        }
        if major_given {
            return v.pre != floor.pre;
        }
        if v.patch != floor.patch {
            return true;
        }
    }
    !v.cmp_precedence(floor).is_eq()
}

fn in_x_range(c: &Partial, v: &Version) -> bool {
    c.major.is_none_or(|m| v.major == m)
        && c.minor.is_none_or(|m| v.minor == m)
        && c.patch.is_none_or(|m| v.patch == m)
}

fn caret(c: &Partial, floor: &Version, v: &Version) -> bool {
    if v.cmp_precedence(floor).is_lt() {
        return false;
    }
    if floor.major > 0 || c.minor.is_none() {
        return v.major == floor.major;
    }
    if v.major > 0 {
        return false;
    }
    if floor.minor > 0 || c.patch.is_none() {
        return v.minor == floor.minor;
    }
    v.minor == 0 && v.patch == floor.patch
}

/// Picks the highest candidate that satisfies `range`. Candidates are scanned in order and one
/// replaces the best so far only if it is strictly greater by precedence, so on a tie the earlier
/// one wins.
pub fn select_highest<T>(
    range: &VersionRange,
    candidates: impl IntoIterator<Item = (Version, T)>,
) -> Option<(Version, T)> {
    let mut best: Option<(Version, T)> = None;
    for (version, item) in candidates {
        if !range.matches(&version) {
            continue;
        }
        if best
            .as_ref()
            .is_none_or(|(b, _)| version.cmp_precedence(b).is_gt())
        {
            best = Some((version, item));
        }
    }
    best
}

/// Which of the matching candidates a selection keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Selection {
    /// The single highest (as [`select_highest`]).
    Highest,
    /// The highest of every `MAJOR.MINOR`.
    HighestPerMinor,
    /// Every distinct version.
    All,
}

/// The candidates that satisfy `range`, kept as `selection` says, highest first. Versions of
/// equal precedence count once, and the earlier candidate wins (build metadata does not count).
pub fn select<T>(
    range: &VersionRange,
    selection: Selection,
    candidates: impl IntoIterator<Item = (Version, T)>,
) -> Vec<(Version, T)> {
    let mut kept: Vec<(Version, T)> = Vec::new();
    for (version, item) in candidates {
        if !range.matches(&version) {
            continue;
        }
        let same = |(v, _): &(Version, T)| match selection {
            Selection::Highest => true,
            Selection::HighestPerMinor => v.major == version.major && v.minor == version.minor,
            Selection::All => v.cmp_precedence(&version).is_eq(),
        };
        match kept.iter().position(same) {
            Some(at) if version.cmp_precedence(&kept[at].0).is_gt() => kept[at] = (version, item),
            Some(_) => {}
            None => kept.push((version, item)),
        }
    }
    kept.sort_by(|(a, _), (b, _)| b.cmp_precedence(a));
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    fn check(range: &str, yes: &[&str], no: &[&str]) {
        let r = VersionRange::parse(range).unwrap_or_else(|e| panic!("{e}"));
        for y in yes {
            assert!(r.matches(&v(y)), "{range} should match {y}");
        }
        for n in no {
            assert!(!r.matches(&v(n)), "{range} should not match {n}");
        }
    }

    #[test]
    fn x_ranges() {
        for r in ["1.27.x", "v1.27.x", "1.27.*", "1.27", "1.27.X", "=1.27"] {
            check(
                r,
                &["1.27.0", "1.27.9"],
                &["1.26.9", "1.28.0", "1.27.1-rc.1"],
            );
        }
        check("*", &["0.0.1", "9.9.9"], &["1.0.0-alpha"]);
        check("1", &["1.0.0", "1.99.0"], &["2.0.0", "0.9.0"]);
    }

    #[test]
    fn comparisons() {
        check("=1.27.3", &["1.27.3", "1.27.3+build"], &["1.27.4"]);
        check("1.27.3", &["1.27.3"], &["1.27.2"]);
        check("!=1.27.3", &["1.27.2", "1.27.4"], &["1.27.3"]);
        check("!=1.27", &["1.26.0", "1.28.0"], &["1.27.5"]);
        check(">1.27.3", &["1.27.4"], &["1.27.3"]);
        check(">1.27", &["1.28.0"], &["1.27.9"]);
        check(">1", &["2.0.0"], &["1.9.9"]);
        check("<1.27", &["1.26.9"], &["1.27.0"]);
        check(">=1.27.3", &["1.27.3", "2.0.0"], &["1.27.2"]);
        check("=>1.27.3", &["1.27.3"], &["1.27.2"]);
        check("<=1.27.3", &["1.27.3"], &["1.27.4"]);
        check("<=1.27", &["1.27.9"], &["1.28.0"]);
        check("=<1.27", &["1.27.9"], &["1.28.0"]);
        check(">= 1.27.0, < 1.29.0", &["1.28.5"], &["1.29.0", "1.26.0"]);
        check(">=1.27.0 <1.29.0", &["1.28.5"], &["1.29.0"]);
    }

    #[test]
    fn tilde_and_caret() {
        check("~1.27.3", &["1.27.3", "1.27.9"], &["1.27.2", "1.28.0"]);
        check("~>1.27.3", &["1.27.9"], &["1.28.0"]);
        check("~1.27", &["1.27.0", "1.27.9"], &["1.28.0", "1.26.9"]);
        check("~1", &["1.0.0", "1.9.0"], &["2.0.0"]);
        check("^1.27.3", &["1.27.3", "1.99.0"], &["2.0.0", "1.27.2"]);
        check("^0.2.3", &["0.2.3", "0.2.9"], &["0.3.0", "0.2.2"]);
        check("^0.0.3", &["0.0.3"], &["0.0.4"]);
        check("^1.2", &["1.9.0"], &["2.0.0"]);
        check("^0", &["0.9.9"], &["1.0.0"]);
    }

    #[test]
    fn or_and_hyphen() {
        check("1.26.x || 1.28.x", &["1.26.1", "1.28.0"], &["1.27.0"]);
        check("1.26 - 1.27", &["1.26.0", "1.27.9"], &["1.25.9", "1.28.0"]);
        check(
            "1.26.3 - 1.27.1",
            &["1.26.3", "1.27.1"],
            &["1.26.2", "1.27.2"],
        );
    }

    #[test]
    fn prereleases_need_a_prerelease_term() {
        check(">=1.28.0-0", &["1.28.0-rc.1", "1.28.0"], &["1.27.9"]);
        check(">=1.27.0", &["1.28.0"], &["1.28.0-rc.1"]);
    }

    #[test]
    fn go_white_space_separates_terms() {
        check(">=1.27.0\t<1.29.0", &["1.28.5"], &["1.29.0"]);
        check(">= 1.27.0,\n< 1.29.0", &["1.28.5"], &["1.29.0", "1.26.0"]);
        check("1.26.x\r\n||\t1.28.x", &["1.26.1", "1.28.0"], &["1.27.0"]);
        check("1.26\t-\t1.27", &["1.27.9"], &["1.28.0"]);
        check("\x0c1.27.x\n", &["1.27.1"], &["1.28.0"]);
    }

    #[test]
    fn numeric_prerelease_identifiers_have_no_leading_zero() {
        check(">=1.28.0-0", &["1.28.0"], &[]);
        check(">=1.28.0-rc.10", &["1.28.0"], &["1.28.0-rc.9"]);
        check(">=1.28.0-0a", &["1.28.0-0b"], &[]);
        for r in [">=1.28.0-01", "1.28.0-rc.007", "~1.28.0-00"] {
            assert!(VersionRange::parse(r).is_err(), "{r:?} should be invalid");
        }
        assert!(VersionRange::parse("1.28.0+build.007").is_ok());
    }

    #[test]
    fn invalid_ranges_are_refused() {
        for r in [
            "",
            " ",
            "1x",
            "x1",
            "a",
            "-1",
            "1.0.0p",
            "1.2.3.4",
            ">",
            "1 -",
            "1.2 - ",
            "||",
            "1,,2",
            "\t",
            "1.2\u{b}",
            "1.2\u{a0}1.3",
        ] {
            assert!(VersionRange::parse(r).is_err(), "{r:?} should be invalid");
        }
    }

    fn picked(range: &str, selection: Selection, candidates: &[&str]) -> Vec<String> {
        let range = VersionRange::parse(range).unwrap();
        select(
            &range,
            selection,
            candidates
                .iter()
                .map(|c| (v(c), (*c).to_owned()))
                .collect::<Vec<_>>(),
        )
        .into_iter()
        .map(|(_, c)| c)
        .collect()
    }

    #[test]
    fn selections_keep_highest_per_minor_or_all_highest_first() {
        let list = [
            "1.26.3",
            "1.27.1",
            "1.27.10",
            "1.27.2",
            "1.28.0-rc.1",
            "1.28.0",
            "1.29.0",
            "1.27.10+b",
        ];
        let range = ">=1.26.0, <1.29.0";
        assert_eq!(picked(range, Selection::Highest, &list), ["1.28.0"]);
        assert_eq!(
            picked(range, Selection::HighestPerMinor, &list),
            ["1.28.0", "1.27.10", "1.26.3"]
        );
        assert_eq!(
            picked(range, Selection::All, &list),
            ["1.28.0", "1.27.10", "1.27.2", "1.27.1", "1.26.3"]
        );
        // A prerelease is kept only when the range names one.
        assert_eq!(
            picked(">=1.28.0-0", Selection::All, &list),
            ["1.29.0", "1.28.0", "1.28.0-rc.1"]
        );
        assert!(picked("1.30.x", Selection::All, &list).is_empty());
        // The same as select_highest, tie included.
        let highest = picked("1.27.x", Selection::Highest, &["1.27.10+a", "1.27.10+b"]);
        assert_eq!(highest, ["1.27.10+a"]);
    }

    /// What v0.6 users write, from its docs, samples and issues: each range with versions that
    /// must and must not match.
    #[test]
    fn v06_user_ranges() {
        let table: &[(&str, &[&str], &[&str])] = &[
            (
                "v1.27.x",
                &["1.27.0", "1.27.6"],
                &["1.28.0", "1.26.9", "1.27.7-rc.0"],
            ),
            ("v1.27", &["1.27.6"], &["1.28.0"]),
            ("V1.27.x", &[], &[]),
            ("~v1.27.3", &["1.27.9"], &["1.27.2", "1.28.0"]),
            ("^v1.27.3", &["1.99.0"], &["2.0.0"]),
            (">= v1.27.0, < v1.29.0", &["1.28.9"], &["1.29.0"]),
            (
                ">=v1.27.0 <v1.29.0 || 1.30.x",
                &["1.28.0", "1.30.2"],
                &["1.29.1"],
            ),
            ("v1.26 - v1.27", &["1.26.0", "1.27.9"], &["1.28.0"]),
            ("1.26.x - 1.27.x", &["1.26.0", "1.27.9"], &["1.28.0"]),
            (">1.27.x", &["1.28.0"], &["1.27.9"]),
            ("<1.27.x", &["1.26.9"], &["1.27.0"]),
            ("*", &["1.27.0", "0.0.0"], &["1.28.0-alpha.1"]),
            ("x", &["1.27.0"], &["1.28.0-alpha.1"]),
            // Per term, as Masterminds: `<1.29.0` names no prerelease, so it refuses every one.
            (
                ">=1.28.0-alpha.0, <1.29.0",
                &["1.28.4"],
                &["1.28.0-beta.2", "1.29.0-rc.0"],
            ),
            (
                ">=1.28.0-alpha.0",
                &["1.28.0-beta.2", "1.29.0"],
                &["1.27.9"],
            ),
            ("1.28.0-rc.1", &["1.28.0-rc.1"], &["1.28.0-rc.2", "1.28.0"]),
            ("~1.28.0-0", &["1.28.0-rc.1", "1.28.3"], &["1.29.0"]),
            ("^0.0.x", &["0.0.9"], &["0.1.0"]),
            ("!=1.27.3, 1.27.x", &["1.27.2"], &["1.27.3"]),
            ("=v1.27.3", &["1.27.3"], &["1.27.4"]),
        ];
        for (range, yes, no) in table {
            if yes.is_empty() && no.is_empty() {
                assert!(
                    VersionRange::parse(range).is_err(),
                    "{range:?} should be invalid"
                );
                continue;
            }
            check(range, yes, no);
        }
    }

    #[test]
    fn highest_prefers_earlier_on_ties() {
        let range = VersionRange::parse("1.27.x").unwrap();
        let got = select_highest(
            &range,
            [
                (v("1.27.1"), "a"),
                (v("1.27.3+one"), "b"),
                (v("1.28.0"), "c"),
                (v("1.27.3+two"), "d"),
            ],
        );
        assert_eq!(got.map(|(_, i)| i), Some("b"));
        assert!(select_highest(&range, [(v("1.26.0"), ())]).is_none());
    }

    /// Masterminds/semver v3's own check cases (TestConstraintsCheck), every one. Candidates
    /// written with fewer than three parts are completed with zeros, as Masterminds reads them.
    const MASTERMINDS_CHECKS: &[(&str, &str, bool)] = &[
        ("*", "1.2.3", true),
        ("~0.0.0", "1.2.3", true),
        ("0.x.x", "1.2.3", false),
        ("0.0.x", "1.2.3", false),
        ("0.0.0", "1.2.3", false),
        ("*", "1.2.3", true),
        ("^0.0.0", "1.2.3", false),
        ("= 2.0", "1.2.3", false),
        ("= 2.0", "2.0.0", true),
        ("4.1", "4.1.0", true),
        ("4.1.x", "4.1.3", true),
        ("1.x", "1.4", true),
        ("!=4.1", "4.1.0", false),
        ("!=4.1-alpha", "4.1.0-alpha", false),
        ("!=4.1-alpha", "4.1.1-alpha", false),
        ("!=4.1-alpha", "4.1.0", true),
        ("!=4.1", "5.1.0", true),
        ("!=4.x", "5.1.0", true),
        ("!=4.x", "4.1.0", false),
        ("!=4.1.x", "4.2.0", true),
        ("!=4.2.x", "4.2.3", false),
        (">1.1", "4.1.0", true),
        (">1.1", "1.1.0", false),
        ("<1.1", "0.1.0", true),
        ("<1.1", "1.1.0", false),
        ("<1.1", "1.1.1", false),
        ("<1.x", "1.1.1", false),
        ("<1.x", "0.1.1", true),
        ("<1.x", "2.0.0", false),
        ("<1.1.x", "1.2.1", false),
        ("<1.1.x", "1.1.500", false),
        ("<1.1.x", "1.0.500", true),
        ("<1.2.x", "1.1.1", true),
        (">=1.1", "4.1.0", true),
        (">=1.1", "4.1.0-beta", false),
        (">=1.1", "1.1.0", true),
        (">=1.1", "0.0.9", false),
        ("<=1.1", "0.1.0", true),
        ("<=1.1", "0.1.0-alpha", false),
        ("<=1.1-a", "0.1.0-alpha", true),
        ("<=1.1", "1.1.0", true),
        ("<=1.x", "1.1.0", true),
        ("<=2.x", "3.0.0", false),
        ("<=1.1", "1.1.1", true),
        ("<=1.1.x", "1.2.500", false),
        ("<=4.5", "3.4.0", true),
        ("<=4.5", "3.7.0", true),
        ("<=4.5", "4.6.3", false),
        (">1.1, <2", "1.1.1", false),
        (">1.1, <2", "1.2.1", true),
        (">1.1, <3", "4.3.2", false),
        (">=1.1, <2, !=1.2.3", "1.2.3", false),
        (">1.1 <2", "1.1.1", false),
        (">1.1 <2", "1.2.1", true),
        (">1.1    <3", "4.3.2", false),
        (">=1.1    <2    !=1.2.3", "1.2.3", false),
        (">=1.1, <2, !=1.2.3 || > 3", "4.1.2", true),
        (">=1.1, <2, !=1.2.3 || > 3", "3.1.2", false),
        (">=1.1, <2, !=1.2.3 || >= 3", "3.0.0", true),
        (">=1.1, <2, !=1.2.3 || > 3", "3.0.0", false),
        (">=1.1, <2, !=1.2.3 || > 3", "1.2.3", false),
        (">=1.1 <2 !=1.2.3", "1.2.3", false),
        (">=1.1 <2 !=1.2.3 || > 3", "4.1.2", true),
        (">=1.1 <2 !=1.2.3 || > 3", "3.1.2", false),
        (">=1.1 <2 !=1.2.3 || >= 3", "3.0.0", true),
        (">=1.1 <2 !=1.2.3 || > 3", "3.0.0", false),
        (">=1.1 <2 !=1.2.3 || > 3", "1.2.3", false),
        ("> 1.1, <     2", "1.1.1", false),
        (">   1.1, <2", "1.2.1", true),
        (">1.1, <  3", "4.3.2", false),
        (">= 1.1, <     2, !=1.2.3", "1.2.3", false),
        ("> 1.1 < 2", "1.1.1", false),
        (">1.1 < 2", "1.2.1", true),
        ("> 1.1    <3", "4.3.2", false),
        (">=1.1    < 2    != 1.2.3", "1.2.3", false),
        (">= 1.1, <2, !=1.2.3 || > 3", "4.1.2", true),
        (">= 1.1, <2, != 1.2.3 || > 3", "3.1.2", false),
        (">= 1.1, <2, != 1.2.3 || >= 3", "3.0.0", true),
        (">= 1.1, <2, !=1.2.3 || > 3", "3.0.0", false),
        (">= 1.1, <2, !=1.2.3 || > 3", "1.2.3", false),
        (">= 1.1 <2 != 1.2.3", "1.2.3", false),
        (">= 1.1 <2 != 1.2.3 || > 3", "4.1.2", true),
        (">= 1.1 <2 != 1.2.3 || > 3", "3.1.2", false),
        (">= 1.1 <2 != 1.2.3 || >= 3", "3.0.0", true),
        (">= 1.1 < 2 !=1.2.3 || > 3", "3.0.0", false),
        (">=1.1 < 2 !=1.2.3 || > 3", "1.2.3", false),
        ("1.1 - 2", "1.1.1", true),
        ("1.5.0 - 4.5", "3.7.0", true),
        ("1.1-3", "4.3.2", false),
        ("^1.1", "1.1.1", true),
        ("^1.1", "4.3.2", false),
        ("^1.x", "1.1.1", true),
        ("^2.x", "1.1.1", false),
        ("^1.x", "2.1.1", false),
        ("^1.x", "1.1.1-beta1", false),
        ("^1.1.2-alpha", "1.2.1-beta1", true),
        ("^1.2.x-alpha", "1.1.1-beta1", false),
        ("^0.0.1", "0.0.1", true),
        ("^0.0.1", "0.3.1", false),
        ("~*", "2.1.1", true),
        ("~1", "2.1.1", false),
        ("~1", "1.3.5", true),
        ("~1", "1.4", true),
        ("~1.x", "2.1.1", false),
        ("~1.x", "1.3.5", true),
        ("~1.x", "1.4", true),
        ("~1.1", "1.1.1", true),
        ("~1.1", "1.1.1-alpha", false),
        ("~1.1-alpha", "1.1.1-beta", true),
        ("~1.1.1-beta", "1.1.1-alpha", false),
        ("~1.1.1-beta", "1.1.1", true),
        ("~1.2.3", "1.2.5", true),
        ("~1.2.3", "1.2.2", false),
        ("~1.2.3", "1.3.2", false),
        ("~1.1", "1.2.3", false),
        ("~1.3", "2.4.5", false),
        ("1.0.0 - 2.0.0 <=2.0.0", "1.5.0", true),
        ("1.0.0 - 2.0.0, <=2.0.0", "1.5.0", true),
    ];

    #[test]
    fn masterminds_check_cases_all_agree() {
        let mut disagree = Vec::new();
        for &(range, version, want) in MASTERMINDS_CHECKS {
            let (core, pre) = version
                .split_once('-')
                .map_or((version, None), |(c, p)| (c, Some(p)));
            let mut parts: Vec<&str> = core.split('.').collect();
            parts.resize(3, "0");
            let full = match pre {
                Some(pre) => format!("{}-{pre}", parts.join(".")),
                None => parts.join("."),
            };
            let got = VersionRange::parse(range).unwrap().matches(&v(&full));
            if got != want {
                disagree.push(format!("{range} vs {version}: want {want}"));
            }
        }
        assert!(disagree.is_empty(), "{disagree:#?}");
    }

    #[test]
    fn tilde_zero_and_partial_not_equal_with_a_prerelease() {
        check("~0.0.0", &["0.0.0", "1.2.3", "7.0.0"], &["1.2.3-rc.1"]);
        check("~0.0", &["0.0.5"], &["0.1.0", "1.0.0"]);
        check(
            "!=4.1-alpha",
            &["4.1.0", "4.1.3", "4.1.0-beta", "4.2.0-alpha"],
            &["4.1.0-alpha", "4.1.7-alpha"],
        );
        check("!=4.1", &["4.2.0", "5.1.0"], &["4.1.0", "4.1.9"]);
        check("!=*", &["1.2.3", "0.0.1"], &["0.0.0"]);
    }
}
