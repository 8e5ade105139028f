//! Requests: the image a client wants and who will use it.

use serde::{Deserialize, Serialize};

use crate::constraint::{Usage, usage_serde};
use crate::format::Fourcc;
use crate::participant::Participant;

/// A buffer request.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// Image width in pixels.
    pub width: u32,
    /// Image height in rows.
    pub height: u32,
    /// Acceptable formats, best first; empty means any format every participant accepts.
    #[serde(default)]
    pub formats: Vec<Fourcc>,
    /// Usage added by the requester on top of the participants' own.
    #[serde(with = "usage_serde", default)]
    pub usage: Usage,
    /// Who will use the buffer.
    pub participants: Vec<Participant>,
    /// How many buffers of this shape (a swapchain or queue depth).
    #[serde(default = "one")]
    pub count: u32,
}

fn one() -> u32 {
    1
}
