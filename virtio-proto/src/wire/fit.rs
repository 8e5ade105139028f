//! Fitting solver output into a `SolveReply`.
//!
//! The solver's diagnostics are unbounded text: a conflict's value lists every alternative's
//! formats, so a large request can explain itself in more bytes than a message holds. The
//! broker turns a solver outcome into a reply with [`SolveReply::from_outcome`], which trims
//! (never reorders) until the reply meets the wire limits and fits in one message.

use crate::solver::{Diagnostic, Solution, SolveError};

use super::message::SolveReply;
use super::{MAX_DIAGNOSTIC_ENTRIES, MAX_PAYLOAD_SIZE, MAX_PLANS, MAX_TEXT};

/// Text limits tried in turn until the diagnostic fits. With the last one a diagnostic always
/// fits: 64 conflicts of at most ~330 bytes (256-byte label) plus 64 notes of 66 bytes plus
/// a split proposal of two plans is under 30 KiB.
const TEXT_STEPS: [usize; 3] = [MAX_TEXT, 256, 64];

/// Marks cut text.
const ELLIPSIS: char = '…';

/// Cuts `s` to at most `max` bytes at a character boundary, ending it with an ellipsis.
fn cut(s: &mut String, max: usize) {
    if s.len() <= max {
        return;
    }
    let mut end = max.saturating_sub(ELLIPSIS.len_utf8());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s.push(ELLIPSIS);
}

fn encoded_len(reply: &SolveReply) -> usize {
    postcard::to_stdvec(reply).map_or(usize::MAX, |b| b.len())
}

/// Trims a diagnostic to the wire limits: at most [`MAX_DIAGNOSTIC_ENTRIES`] conflicts (the
/// set is then no longer complete, so `minimal` becomes false and a note says how many were
/// left out) and notes, and text cut shorter and shorter until the reply fits.
pub fn fit_diagnostic(mut d: Diagnostic) -> Diagnostic {
    if d.conflicts.len() > MAX_DIAGNOSTIC_ENTRIES {
        let omitted = d.conflicts.len() - MAX_DIAGNOSTIC_ENTRIES;
        d.conflicts.truncate(MAX_DIAGNOSTIC_ENTRIES);
        d.minimal = false;
        d.notes.insert(
            0,
            format!("{omitted} more conflicting constraints not listed"),
        );
    }
    if d.notes.len() > MAX_DIAGNOSTIC_ENTRIES {
        let omitted = d.notes.len() - (MAX_DIAGNOSTIC_ENTRIES - 1);
        d.notes.truncate(MAX_DIAGNOSTIC_ENTRIES - 1);
        d.notes.push(format!("{omitted} more notes not listed"));
    }
    let mut reply = SolveReply::Unsatisfiable(Box::new(d));
    for max in TEXT_STEPS {
        if let SolveReply::Unsatisfiable(d) = &mut reply {
            d.conflicts.iter_mut().for_each(|c| cut(&mut c.value, max));
            d.notes.iter_mut().for_each(|n| cut(n, max));
        }
        if encoded_len(&reply) <= MAX_PAYLOAD_SIZE {
            break;
        }
    }
    match reply {
        SolveReply::Unsatisfiable(d) => *d,
        SolveReply::Solved(_) => Diagnostic {
            conflicts: Vec::new(),
            minimal: false,
            split: None,
            notes: Vec::new(),
        },
    }
}

/// Keeps the best [`MAX_PLANS`] plans.
pub fn fit_solution(mut s: Solution) -> Solution {
    s.plans.truncate(MAX_PLANS);
    s
}

impl SolveReply {
    /// The reply for a solver outcome, trimmed to fit one message. Failures other than
    /// "unsatisfiable" come back as `Err`, for an `ErrorReply` with
    /// [`ErrorCode::from`](super::ErrorCode)`(&error)`.
    pub fn from_outcome(outcome: Result<Solution, SolveError>) -> Result<SolveReply, SolveError> {
        match outcome {
            Ok(s) => Ok(SolveReply::Solved(fit_solution(s))),
            Err(SolveError::Unsatisfiable(d)) => {
                Ok(SolveReply::Unsatisfiable(Box::new(fit_diagnostic(*d))))
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_keeps_short_text_and_ends_long_text_with_an_ellipsis() {
        let mut short = "abc".to_owned();
        let mut long = "é".repeat(10);

        cut(&mut short, 3);
        cut(&mut long, 8);

        assert_eq!(short, "abc");
        assert_eq!(long, "éé…");
        assert!(long.len() <= 8);
    }
}
