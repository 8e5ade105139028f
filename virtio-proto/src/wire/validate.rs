//! Hard limits on decoded messages, beyond what postcard's framing already bounds.
//!
//! Requests go through [`crate::limits`]; the lists and strings the wire adds (guest ranges,
//! ping payloads, names, replies' plans and diagnostics) are checked here. Both the decoder
//! and the encoder run these checks, so a peer never produces a message the other side
//! rejects for its limits.

use crate::limits::{self, LimitError, MAX_BUFFER_COUNT, MAX_PARTICIPANTS, MAX_PLANES, MAX_STRING};
use crate::plan::Plan;
use crate::solver::{ConstraintOwner, Diagnostic, Solution};

use super::message::{Event, Message, Placement, SolveReply};
use super::{
    MAX_DIAGNOSTIC_ENTRIES, MAX_ERROR_MESSAGE, MAX_GUEST_RANGES, MAX_IGNORED_EXTENSIONS,
    MAX_PING_PAYLOAD, MAX_PLANS, MAX_STATS_OWNERS, MAX_TEXT,
};

fn count(what: &'static str, len: usize, max: usize) -> Result<(), LimitError> {
    if len > max {
        Err(LimitError::TooMany { what, len, max })
    } else {
        Ok(())
    }
}

fn string(what: &'static str, s: &str) -> Result<(), LimitError> {
    count(what, s.len(), MAX_STRING)
}

fn text(what: &'static str, s: &str) -> Result<(), LimitError> {
    count(what, s.len(), MAX_TEXT)
}

fn plan(p: &Plan) -> Result<(), LimitError> {
    count("plan planes", p.planes.len(), MAX_PLANES)?;
    string("plan heap", &p.heap)?;
    count("plan alternatives", p.alternatives.len(), MAX_PARTICIPANTS)
}

fn solution(s: &Solution) -> Result<(), LimitError> {
    count("plans", s.plans.len(), MAX_PLANS)?;
    s.plans.iter().try_for_each(plan)?;
    count(
        "ignored extensions",
        s.ignored_extensions.len(),
        MAX_IGNORED_EXTENSIONS,
    )
}

fn diagnostic(d: &Diagnostic) -> Result<(), LimitError> {
    count("conflicts", d.conflicts.len(), MAX_DIAGNOSTIC_ENTRIES)?;
    for c in &d.conflicts {
        if let ConstraintOwner::Participant { label, .. } = &c.owner {
            string("conflict participant label", label)?;
        }
        text("conflict value", &c.value)?;
    }
    if let Some(split) = &d.split {
        count("split group", split.first.len(), MAX_PARTICIPANTS)?;
        count("split group", split.second.len(), MAX_PARTICIPANTS)?;
        plan(&split.first_plan)?;
        plan(&split.second_plan)?;
    }
    count("notes", d.notes.len(), MAX_DIAGNOSTIC_ENTRIES)?;
    d.notes.iter().try_for_each(|n| text("note", n))
}

/// Checks every list and string of a message against its limit.
pub fn check_message(message: &Message) -> Result<(), LimitError> {
    match message {
        Message::Hello(m) => string("client name", &m.client),
        Message::HelloReply(m) => string("broker name", &m.broker),
        Message::Ping(m) => count("ping payload", m.payload.len(), MAX_PING_PAYLOAD),
        Message::Pong(m) => count("pong payload", m.payload.len(), MAX_PING_PAYLOAD),
        Message::RegisterParticipant(m) => {
            string("participant name", &m.name)?;
            limits::check_participant(&m.participant)
        }
        Message::Solve(m) => limits::check_request(&m.request),
        Message::SolveReply(SolveReply::Solved(s)) => solution(s),
        Message::SolveReply(SolveReply::Unsatisfiable(d)) => diagnostic(d),
        Message::Allocate(m) => {
            limits::check_request(&m.request)?;
            match &m.placement {
                Placement::GuestRam { ranges } => {
                    count("guest ranges", ranges.len(), MAX_GUEST_RANGES)
                }
                Placement::HostWindow | Placement::HostClient => Ok(()),
            }
        }
        Message::AllocateReply(m) => {
            plan(&m.plan)?;
            count("buffers", m.buffers.len(), MAX_BUFFER_COUNT as usize)
        }
        Message::Grant(m) => string("grantee", &m.grantee),
        Message::ImportReply(m) => plan(&m.plan),
        Message::StatsReply(m) => {
            count("owners", m.owners.len(), MAX_STATS_OWNERS)?;
            m.owners
                .iter()
                .try_for_each(|o| string("owner name", &o.owner))
        }
        Message::Event(Event::BufferRevoked { reason, .. }) => string("revocation reason", reason),
        Message::Event(Event::ParticipantGone { name }) => string("participant name", name),
        Message::Event(Event::QuotaChanged { .. }) => Ok(()),
        Message::IovasReply(m) => {
            count("IOVA mappings", m.iovas.len(), MAX_PARTICIPANTS)?;
            m.iovas
                .iter()
                .try_for_each(|i| string("IOVA participant", &i.participant))
        }
        Message::ErrorReply(m) => count("error message", m.message.len(), MAX_ERROR_MESSAGE),
        Message::RegisterParticipantReply(_)
        | Message::UnregisterParticipant(_)
        | Message::UnregisterParticipantReply(_)
        | Message::Free(_)
        | Message::FreeReply(_)
        | Message::Export(_)
        | Message::ExportReply(_)
        | Message::Import(_)
        | Message::GrantReply(_)
        | Message::Map(_)
        | Message::MapReply(_)
        | Message::Unmap(_)
        | Message::UnmapReply(_)
        | Message::QueryStats(_)
        | Message::QueryLimits(_)
        | Message::QueryIovas(_)
        | Message::LimitsReply(_) => Ok(()),
    }
}
