//! Ordered approval stages on every path that can approve a gate: the
//! CLI, the JSON contract on NATS, moira-web's API, and a workflow run.

use std::time::Duration;

use moira_client::protocol::stages::Stage;
use moira_client::protocol::GateStatus;
use moira_client::{ApproveGate, GateId, OpenGate};
use moira_tests::moira;

use crate::Stack;

fn qa_then_two_owners() -> Vec<Stage> {
    vec![
        Stage {
            users: vec!["quinn".into()],
            count: 1,
            ..Default::default()
        },
        Stage {
            users: vec!["olga".into(), "oscar".into()],
            count: 2,
            ..Default::default()
        },
    ]
}

#[test]
fn the_cli_opens_a_staged_gate_and_refuses_an_approval_out_of_order() {
    let server = moira_tests::NatsServer::start();
    let url = server.url();
    let _gk = moira_tests::gatekeeper(&url, &[]);
    let (code, out, err) = moira(
        &url,
        &[
            "--as",
            "alice",
            "gate",
            "open",
            "--message",
            "Release 2.0?",
            "--stage",
            "users=quinn",
            "--stage",
            "users=olga,oscar count=2",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let gate = out.trim().to_string();
    let (_, shown, _) = moira(&url, &["gate", "show", &gate]);
    assert!(
        shown.contains("stage 1:") && shown.contains("NOW"),
        "{shown}"
    );
    assert!(
        shown.contains("stage 2:") && shown.contains("waits"),
        "{shown}"
    );
    let approve = |who: &str| moira(&url, &["--as", who, "gate", "approve", &gate]);
    let (code, _, err) = approve("olga");
    assert_ne!(code, 0);
    assert!(
        err.contains("out_of_order") && err.contains("stage 1 of 2"),
        "{err}"
    );
    assert!(err.contains("moira gate show"), "the hint: {err}");
    let (code, _, err) = approve("quinn");
    assert_eq!(code, 0, "{err}");
    let (_, shown, _) = moira(&url, &["gate", "show", &gate]);
    assert!(shown.contains("by quinn) met"), "{shown}");
    assert_eq!(approve("olga").0, 0);
    let (code, _, err) = approve("olga");
    assert_ne!(code, 0, "olga counts once");
    assert!(err.contains("already approved"), "{err}");
    assert_eq!(approve("oscar").0, 0);
    let (_, json, _) = moira(&url, &["--json", "gate", "show", &gate]);
    let v: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(v["status"], "approved");
    assert_eq!(
        v["stages"][1]["approved_by"],
        serde_json::json!(["olga", "oscar"])
    );
    // A bad stage is a clear error, and opens nothing.
    let (code, _, err) = moira(
        &url,
        &[
            "--as",
            "alice",
            "gate",
            "open",
            "--message",
            "x",
            "--stage",
            "users=a count=two",
        ],
    );
    assert_ne!(code, 0);
    assert!(err.contains("count 'two' is not a number"), "{err}");
    let (code, _, err) = moira(
        &url,
        &[
            "--as",
            "alice",
            "gate",
            "open",
            "--message",
            "x",
            "--stage",
            "users=a",
            "--approver",
            "b",
        ],
    );
    assert_ne!(code, 0, "{err}");
}

/// A JSON request on the NATS contract, as an outside tool sends it.
async fn request(s: &Stack, verb: &str, body: serde_json::Value) -> serde_json::Value {
    let reply = s
        .client
        .nats()
        .request(format!("moira.cmd.gate.{verb}"), body.to_string().into())
        .await
        .expect("a reply");
    serde_json::from_slice(&reply.payload).expect("a JSON reply")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_contract_takes_stages_and_refuses_a_later_stage_with_out_of_order() {
    let s = Stack::start().await;
    let r = request(
        &s,
        "open",
        serde_json::json!({
            "actor": "alice", "message": "Ship?",
            "stages": [{"roles": ["qa"]}, {"users": ["olga", "oscar"], "count": 2}]
        }),
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["gate"]["stage"], 1, "{r}");
    let gate = r["gate"]["id"].as_str().expect("id").to_string();
    let approve = |who: &str| serde_json::json!({"gate_id": gate, "actor": who});
    let r = request(&s, "approve", approve("olga")).await;
    assert_eq!(r["error"]["code"], "out_of_order", "{r}");
    // Nothing was stored by the refusal.
    let id: GateId = gate.parse().expect("id");
    assert!(s.client.show(id).await.expect("show").approvals.is_empty());
    // Stages and a flat approvers list at once are refused.
    let r = request(
        &s,
        "open",
        serde_json::json!({"actor": "alice", "message": "x", "approvers": ["bob"], "stages": [{"users": ["quinn"]}]}),
    )
    .await;
    assert_eq!(r["error"]["code"], "bad_request", "{r}");
    let r = request(
        &s,
        "open",
        serde_json::json!({"actor": "alice", "message": "x", "stages": [{"users": ["quinn"], "count": 0}]}),
    )
    .await;
    assert_eq!(r["error"]["code"], "bad_request", "{r}");
    let r = request(
        &s,
        "open",
        serde_json::json!({"actor": "alice", "message": "x", "stages": [{"users": ["quinn"], "colour": "red"}]}),
    )
    .await;
    assert_eq!(r["error"]["code"], "bad_request", "an unknown field: {r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moira_web_approvals_follow_the_stages() {
    let s = Stack::start().await;
    let w = crate::web::web(
        &s.url(),
        &["--auth", "proxy", "--trusted-proxy", "127.0.0.1"],
    );
    let gate = s
        .client
        .open(OpenGate {
            actor: "alice".into(),
            message: "Ship?".into(),
            stages: qa_then_two_owners(),
            ..Default::default()
        })
        .await
        .expect("open")
        .id;
    let approve = |who: &'static str| {
        let url = format!("{}/gates/{gate}/approve", w.base);
        async move {
            let r = reqwest::Client::new()
                .post(url)
                .header("x-forwarded-user", who)
                .header("content-type", "application/json")
                .body("{}")
                .send()
                .await
                .expect("moira-web answers");
            let code = r.status().as_u16();
            let text = r.text().await.expect("body");
            (
                code,
                serde_json::from_str::<serde_json::Value>(&text).expect("json"),
            )
        }
    };
    let (code, r) = approve("oscar").await;
    assert_eq!(
        (code, r["error"]["code"].as_str()),
        (409, Some("out_of_order")),
        "{r}"
    );
    let html = reqwest::get(format!("{}/gates/{gate}", w.root))
        .await
        .expect("page")
        .text()
        .await
        .expect("html");
    assert!(
        html.contains("Stages") && html.contains("may approve now"),
        "{html}"
    );
    for who in ["quinn", "oscar", "olga"] {
        let (code, r) = approve(who).await;
        assert_eq!(code, 200, "{who}: {r}");
    }
    assert_eq!(
        s.client.show(gate).await.expect("show").status,
        GateStatus::Approved
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflow_gate_with_stages_moves_on_only_when_every_stage_is_met() {
    use moira_client::protocol::run::{RunStatus, StepStatus};
    let s = crate::runs::Runs::start(1).await;
    let yaml = r#"name: staged
steps:
  - name: review
    use: moira.gate
    with:
      message: Ship?
      stages:
        - { users: [quinn] }
        - { users: [olga, oscar], count: 2 }
  - { name: deploy, depends_on: [review], run: 'echo shipped' }
"#;
    let run = s.submit(yaml, &[]).await;
    let wait = s.client.wait_run_until(&run, |r| {
        r.steps
            .get("review")
            .is_some_and(|st| st.status == StepStatus::Waiting)
    });
    let view = tokio::time::timeout(Duration::from_secs(60), wait)
        .await
        .expect("waits in time")
        .expect("wait");
    let gate = view
        .steps
        .iter()
        .find(|st| st.name == "review")
        .and_then(|st| st.gate_id)
        .expect("gate");
    let approve = |who: &str| ApproveGate {
        gate_id: gate,
        actor: who.into(),
        ..Default::default()
    };
    let e = s
        .client
        .approve(approve("olga"))
        .await
        .expect_err("out of order");
    assert!(e.to_string().contains("out_of_order"), "{e}");
    s.client.approve(approve("quinn")).await.expect("qa");
    s.client.approve(approve("olga")).await.expect("owner 1");
    let shown = s.client.show(gate).await.expect("show");
    assert_eq!(shown.status, GateStatus::Waiting, "one owner of two");
    s.client.approve(approve("oscar")).await.expect("owner 2");
    let done = s.finished(&run).await;
    assert_eq!(done.status, RunStatus::Succeeded, "{done:?}");
    s.step_printed(&run, "deploy", "shipped").await;
    // A workflow naming stages and approvers for one gate is refused.
    let both = "name: both\nsteps:\n  - name: g\n    use: moira.gate\n    with: { message: x, approvers: { users: [bob] }, stages: [{ users: [quinn] }] }\n";
    let e = s
        .client
        .submit_run(both, &Default::default(), "alice")
        .await
        .expect_err("refused at submit");
    assert!(e.to_string().contains("not both"), "{e}");
}
