//! Ordered approval stages: a gate whose approvers come in turn (QA first,
//! then two owners). Each stage names users and/or roles and a count; an
//! approval counts for the first stage not yet met, and only someone that
//! stage accepts may give it. The gate is approved when the last stage is
//! met; a denial by any stage's approver denies it; a push-back starts a
//! new iteration, so every stage starts again.
//!
//! The stored approvals carry no stage: each is the next one of the stage
//! that was current when it was recorded, so the fold assigns them again
//! in order ([`progress`]).

use serde::{Deserialize, Serialize};

use crate::gate::{Approval, GateState};

/// At most this many stages per gate.
pub const MAX_STAGES: usize = 8;

/// One stage of a gate's approvers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Stage {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    /// Approvals this stage needs (default 1).
    #[serde(default = "one")]
    pub count: u32,
}

fn one() -> u32 {
    1
}

impl Default for Stage {
    /// Anyone, once.
    fn default() -> Self {
        Stage {
            users: Vec::new(),
            roles: Vec::new(),
            count: 1,
        }
    }
}

impl Stage {
    /// Whether someone named `name` (`None`: a deputy limited to roles,
    /// who matches no name) with `roles` may approve in this stage.
    pub fn accepts(&self, name: Option<&str>, roles: &[String]) -> bool {
        (self.users.is_empty() && self.roles.is_empty())
            || name.is_some_and(|n| self.users.iter().any(|u| u == n))
            || roles.iter().any(|r| self.roles.contains(r))
    }

    /// "users a, b; roles qa" for messages.
    pub fn who(&self) -> String {
        let mut who = Vec::new();
        if !self.users.is_empty() {
            who.push(format!("users {}", self.users.join(", ")));
        }
        if !self.roles.is_empty() {
            who.push(format!("roles {}", self.roles.join(", ")));
        }
        if who.is_empty() {
            who.push("anyone".into());
        }
        who.join("; ")
    }
}

/// One stage as it stands: its approvers so far and whether it is met.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StageView {
    pub users: Vec<String>,
    pub roles: Vec<String>,
    pub count: u32,
    /// Who approved in this stage, this iteration ("bob", or "bob for
    /// alice" for a deputy).
    pub approved_by: Vec<String>,
    pub met: bool,
}

/// The approvals of the current iteration split over the stages, in order.
pub fn progress<'a>(stages: &[Stage], approvals: &'a [Approval]) -> Vec<Vec<&'a Approval>> {
    let mut out = Vec::with_capacity(stages.len());
    let mut rest = approvals.iter();
    for s in stages {
        out.push(rest.by_ref().take(s.count as usize).collect());
    }
    out
}

/// The stage now taking approvals (0-based), if the gate has stages and
/// not all are met.
pub fn current(state: &GateState) -> Option<usize> {
    let stages = &state.spec.stages;
    progress(stages, &state.approvals)
        .iter()
        .zip(stages)
        .position(|(got, s)| got.len() < s.count as usize)
}

/// The stages as views, for people and tools.
pub fn views(state: &GateState) -> Vec<StageView> {
    let stages = &state.spec.stages;
    progress(stages, &state.approvals)
        .into_iter()
        .zip(stages)
        .map(|(got, s)| StageView {
            users: s.users.clone(),
            roles: s.roles.clone(),
            count: s.count,
            met: got.len() >= s.count as usize,
            approved_by: got.into_iter().map(Approval::who).collect(),
        })
        .collect()
}

/// Checks stages as a request names them; returns the approvers they add
/// up to (every user and role) and the total of their counts.
pub fn check(stages: &[Stage]) -> Result<(Vec<String>, Vec<String>, u32), String> {
    if stages.len() > MAX_STAGES {
        return Err(format!("a gate may have at most {MAX_STAGES} stages"));
    }
    let (mut users, mut roles, mut total) = (Vec::new(), Vec::new(), 0u32);
    for (i, s) in stages.iter().enumerate() {
        let n = i + 1;
        if s.count == 0 {
            return Err(format!("stage {n}: count must be at least 1"));
        }
        if s.users.len() > crate::gate::MAX_NAMES || s.roles.len() > crate::gate::MAX_NAMES {
            return Err(format!(
                "stage {n}: at most {} users and roles",
                crate::gate::MAX_NAMES
            ));
        }
        for (what, name) in s
            .users
            .iter()
            .map(|u| ("approver", u))
            .chain(s.roles.iter().map(|r| ("role", r)))
        {
            if !crate::ids::is_valid_name(name) {
                return Err(format!("stage {n}: {}", crate::gate::bad_name(what, name)));
            }
        }
        let mut distinct = s.users.clone();
        distinct.sort();
        distinct.dedup();
        if s.roles.is_empty() && !distinct.is_empty() && s.count as usize > distinct.len() {
            return Err(format!(
                "stage {n}: {} approvals needed but only {} approver(s) named",
                s.count,
                distinct.len()
            ));
        }
        total = total.saturating_add(s.count);
        for u in &s.users {
            if !users.contains(u) {
                users.push(u.clone());
            }
        }
        for r in &s.roles {
            if !roles.contains(r) {
                roles.push(r.clone());
            }
        }
    }
    users.sort();
    Ok((users, roles, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn approval(by: &str) -> Approval {
        Approval {
            by: by.into(),
            at: 0,
            comment: None,
            key: None,
            via: None,
            on_behalf_of: None,
        }
    }

    #[test]
    fn approvals_fill_the_stages_in_order() {
        let stages = vec![
            Stage {
                roles: vec!["qa".into()],
                count: 1,
                ..Default::default()
            },
            Stage {
                roles: vec!["owner".into()],
                count: 2,
                ..Default::default()
            },
        ];
        let a = [approval("q"), approval("o1"), approval("o2")];
        let p = progress(&stages, &a[..2]);
        assert_eq!(p[0].len(), 1);
        assert_eq!(p[1].len(), 1);
        assert_eq!(check(&stages).expect("ok").2, 3);
        let bad = vec![Stage {
            users: vec!["a".into()],
            count: 2,
            ..Default::default()
        }];
        assert!(check(&bad).is_err());
        assert!(check(&vec![Stage::default(); MAX_STAGES + 1]).is_err());
        assert!(check(&[Stage {
            count: 0,
            ..Default::default()
        }])
        .is_err());
    }
}
