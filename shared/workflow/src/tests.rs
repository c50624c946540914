use super::*;

const RELEASE: &str = r#"
name: release
vars: { tag: v1.0.0, env: prod }
steps:
  - name: build
    run: ./build.sh ${{ vars.tag }}
  - name: approve-deploy
    use: moira.gate
    with:
      message: "Deploy ${{ vars.tag }} to production?"
      timeout: 24h
      on_timeout: fail
      approvers: { roles: [owner], users: [bob] }
      approvals: 1
      allow_self_approval: false
      inputs: [WINDOW]
      required: [WINDOW]
      when: ${{ vars.env == 'prod' }}
    on_deny: fail
    depends_on: [build]
  - name: deploy
    run: ./deploy.sh --window "$WINDOW" --by "${{ steps.approve-deploy.outputs.approved_by }}"
    depends_on: [approve-deploy]
  - name: plan
    run: ./plan.sh
    approval:
      prompt: "Review the plan"
      input: [FEEDBACK]
"#;

fn invalid(yaml: &str) -> Vec<String> {
    match Workflow::parse(yaml, &BTreeMap::new()) {
        Err(WorkflowError::Invalid(p)) => p,
        other => panic!("expected problems, got {other:?}"),
    }
}

#[test]
fn the_documented_example_parses() {
    let wf = Workflow::parse(RELEASE, &BTreeMap::new()).expect("valid");
    assert_eq!(wf.steps.len(), 4);
    let gate = wf
        .step("approve-deploy")
        .and_then(Step::gate)
        .expect("gate");
    assert_eq!(gate.required, vec!["WINDOW".to_string()]);
    assert_eq!(
        wf.step("plan")
            .and_then(|s| s.approval.as_ref())
            .map(|r| r.input.clone()),
        Some(vec!["FEEDBACK".into()])
    );
    assert_eq!(
        wf.dependents("build"),
        BTreeSet::from(["approve-deploy".to_string(), "deploy".to_string()])
    );
    assert_eq!(
        wf.ancestors("deploy"),
        BTreeSet::from(["approve-deploy".to_string(), "build".to_string()])
    );
}

#[test]
fn vars_can_be_overridden() {
    let wf = Workflow::parse(
        RELEASE,
        &BTreeMap::from([("tag".to_string(), "v2".to_string())]),
    )
    .expect("valid");
    assert_eq!(wf.var("tag").as_deref(), Some("v2"));
}

#[test]
fn unknown_dependencies_cycles_and_duplicates() {
    let p = invalid("name: x\nsteps:\n  - {name: a, run: 'true', depends_on: [nope]}\n");
    assert!(p.iter().any(|m| m.contains("unknown step 'nope'")), "{p:?}");
    let p = invalid("name: x\nsteps:\n  - {name: a, run: 'true', depends_on: [b]}\n  - {name: b, run: 'true', depends_on: [a]}\n");
    assert!(p.iter().any(|m| m.contains("cycle")), "{p:?}");
    let p = invalid("name: x\nsteps:\n  - {name: a, run: 'true'}\n  - {name: a, run: 'true'}\n");
    assert!(
        p.iter().any(|m| m.contains("two steps are named 'a'")),
        "{p:?}"
    );
    let p = invalid("name: x\nsteps:\n  - {name: 'a b', run: 'true'}\n");
    assert!(p.iter().any(|m| m.contains("may hold only")), "{p:?}");
}

#[test]
fn gate_problems() {
    let p = invalid("name: x\nsteps:\n  - name: g\n    use: moira.gate\n    with: {message: hi, inputs: [A], required: [B], timeout: soon}\n");
    assert!(p.iter().any(|m| m.contains("required input 'B'")), "{p:?}");
    assert!(p.iter().any(|m| m.contains("with.timeout")), "{p:?}");
    let p = invalid("name: x\nsteps:\n  - {name: g, use: moira.approve}\n");
    assert!(p.iter().any(|m| m.contains("unknown use")), "{p:?}");
    let p = invalid("name: x\nsteps:\n  - {name: g, use: moira.gate}\n");
    assert!(p.iter().any(|m| m.contains("needs with:")), "{p:?}");
}

#[test]
fn template_references_are_checked() {
    let p = invalid("name: x\nsteps:\n  - {name: a, run: 'echo ${{ vars.nope }}'}\n");
    assert!(
        p.iter().any(|m| m.contains("unknown variable vars.nope")),
        "{p:?}"
    );
    let p = invalid("name: x\nsteps:\n  - {name: a, run: 'true'}\n  - {name: b, run: 'echo ${{ steps.a.outputs.x }}'}\n");
    assert!(
        p.iter().any(|m| m.contains("add 'a' to depends_on")),
        "{p:?}"
    );
    let p = invalid("name: x\nsteps:\n  - {name: a, run: 'echo ${{ steps.zz.outputs.x }}'}\n");
    assert!(p.iter().any(|m| m.contains("unknown step")), "{p:?}");
    let p = invalid("name: x\nsteps:\n  - {name: g, use: moira.gate, with: {message: m}}\n  - {name: b, run: 'echo ${{ steps.g.outputs.WINDOW }}', depends_on: [g]}\n");
    assert!(
        p.iter().any(|m| m.contains("has no output 'WINDOW'")),
        "{p:?}"
    );
    let p = invalid("name: x\nsteps:\n  - {name: a, run: 'echo ${{ vars.x'}\n");
    assert!(p.iter().any(|m| m.contains("unclosed")), "{p:?}");
}

#[test]
fn bad_yaml_and_unknown_fields() {
    assert!(matches!(
        Workflow::parse("name: [", &BTreeMap::new()),
        Err(WorkflowError::Yaml(_))
    ));
    let e = Workflow::parse(
        "name: x\nsteps:\n  - {name: a, run: 'true', retry: 3}\n",
        &BTreeMap::new(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("retry"), "{e}");
}

#[test]
fn hostile_sizes_are_refused() {
    let deep = format!(
        "name: x\nsteps:\n  - {{name: a, run: 'true', when: '${{{{ {}true }}}}'}}\n",
        "!".repeat(5_000)
    );
    let p = invalid(&deep);
    assert!(p.iter().any(|m| m.contains("nest")), "{p:?}");
    let huge = format!(
        "name: x\nsteps:\n  - {{name: a, run: '{}'}}\n",
        "x".repeat(300_000)
    );
    assert!(Workflow::parse(&huge, &BTreeMap::new()).is_err());
    let p = invalid("name: x\nsteps:\n  - {name: a, run: 'true', timeout: 18446744073709552s}\n");
    assert!(p.iter().any(|m| m.contains("timeout")), "{p:?}");
    let p = invalid("name: x\nsteps:\n  - name: g\n    use: moira.gate\n    with: {message: m, timeout: 400d, on_timeout: approve}\n");
    assert!(p.iter().any(|m| m.contains("366 days")), "{p:?}");
    let p =
        invalid("name: x\nsteps:\n  - {name: a, run: 'true', env: {MOIRA_OUTPUT: x, 'A B': y}}\n");
    assert!(p.iter().any(|m| m.contains("MOIRA_")), "{p:?}");
    assert!(p.iter().any(|m| m.contains("'A B'")), "{p:?}");
    let p = invalid("name: x\nsteps:\n  - name: g\n    use: moira.gate\n    with: {message: m, inputs: [LD_PRELOAD, PATH]}\n");
    assert_eq!(
        p.iter().filter(|m| m.contains("is reserved")).count(),
        2,
        "{p:?}"
    );
}

#[test]
fn a_gate_the_gatekeeper_would_refuse_fails_validation_with_its_reason() {
    let p = invalid("name: x\nsteps:\n  - name: g\n    use: moira.gate\n    with: {message: m, approvals: 3, approvers: {users: [bob]}}\n");
    assert!(
        p.iter()
            .any(|m| m.contains("would refuse its gate") && m.contains("3 approvals")),
        "{p:?}"
    );
    let p = invalid(
        "name: x\nsteps:\n  - name: g\n    use: moira.gate\n    with: {message: m, inputs: ['NOTE WELL']}\n",
    );
    assert!(
        p.iter().any(|m| m.contains("input name 'NOTE WELL'")),
        "{p:?}"
    );
    let p = invalid(&format!(
        "name: x\nsteps:\n  - {{name: a, run: 'true', approval: {{prompt: '{}'}}}}\n",
        "p".repeat(5_000)
    ));
    assert!(
        p.iter()
            .any(|m| m.contains("review gate") && m.contains("longer than")),
        "{p:?}"
    );
    // What the gate-keeper takes, validation takes.
    Workflow::parse(
        "name: x\nsteps:\n  - name: g\n    use: moira.gate\n    with: {message: m, approvals: 2, approvers: {users: [bob, carol]}, inputs: [NOTE]}\n",
        &BTreeMap::new(),
    )
    .expect("valid");
}

#[test]
fn every_example_workflow_is_valid() {
    // Each file of examples/ and its folders, as `moira run submit` would
    // send it: with every file it calls.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut seen = 0;
    let mut dirs = vec![root];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("examples/") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().and_then(|e| e.to_str()) != Some("yml") {
                continue;
            }
            // examples/ci/ holds CI systems' own files, not moira workflows.
            if path.parent().and_then(|p| p.file_name()) == Some(std::ffi::OsStr::new("ci")) {
                continue;
            }
            let bundle =
                crate::bundle::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            if let Err(e) = crate::bundle::check(
                &bundle.path,
                &bundle.text,
                &BTreeMap::new(),
                &bundle.includes,
            ) {
                panic!("{}: {e}", path.display());
            }
            seen += 1;
        }
    }
    assert!(seen >= 5, "found {seen} example workflows");
}
