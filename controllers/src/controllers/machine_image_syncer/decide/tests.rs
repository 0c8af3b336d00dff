//! Table tests of the pure steps: validation, which versions, whether to create, the image's
//! metadata and spec, each condition reason and the events on transitions.

use super::*;
use crate::controllers::machine_image_syncer::validate::*;
use crate::runtime::builders::{Build, Fixture, now, ready};
use api::constraint::Selection;
use serde_json::json;

fn syncer(spec: &Value) -> MachineImageSyncer {
    MachineImageSyncer::test("sync")
        .with_uid("uid-1")
        .with_generation(3)
        .with_spec(spec)
}

/// A template whose own labels and annotations include ones the syncer sets itself.
fn template() -> MachineImageTemplate {
    let mut template = MachineImageTemplate::test("tpl");
    template.spec.template.metadata = Some(
        serde_json::from_value(json!({
            "labels": {"imageBuilderVersion": "v1", SYNCER_NAME_LABEL: "hijack", KUBERNETES_VERSION_LABEL: "v0.0.0"},
            "annotations": {"team": "infra", CLONED_FROM_ANNOTATION: "other"},
        }))
        .unwrap(),
    );
    template.spec.template.spec.job_template.spec.containers[0].image = Some("builder:1".into());
    template
}

fn view(versions: &[&str]) -> SourceView {
    SourceView {
        versions: versions.iter().map(|v| (*v).to_owned()).collect(),
        debian: BTreeMap::new(),
    }
}

fn existing(version: &str) -> Existing {
    Existing {
        name: format!("sync-{version}-xxxxx"),
        version_label: version.to_owned(),
        spec_version: Some(version.to_owned()),
        building: false,
    }
}

struct Case<'a> {
    syncer: MachineImageSyncer,
    source: Option<Result<SourceView, SourceFailure>>,
    images: Vec<Existing>,
    template: Option<&'a MachineImageTemplate>,
}

impl Case<'_> {
    fn new(spec: &Value, versions: &[&str]) -> Self {
        Self {
            syncer: syncer(spec),
            source: Some(Ok(view(versions))),
            images: Vec::new(),
            template: None,
        }
    }

    fn decide(&self) -> Decision {
        let validated = validate(&self.syncer);
        decide(&Observed {
            syncer: &self.syncer,
            validated: &validated,
            source: self.source.as_ref(),
            images: &self.images,
            template: self.template,
            now: &now(),
        })
    }
}

fn created_versions(decision: &Decision) -> Vec<String> {
    decision
        .creates
        .iter()
        .map(|i| i.spec.version.clone())
        .collect()
}

#[test]
fn each_condition_reason() {
    let tpl = template();
    let list = ["v1.26.9", "v1.27.1", "v1.27.3", "v1.28.0"];
    let cases: Vec<(&str, Case, &str, &str)> = vec![
        (
            "first sync",
            Case {
                template: Some(&tpl),
                ..Case::new(&json!({}), &list)
            },
            "True",
            "Synced",
        ),
        (
            "already built",
            Case {
                images: vec![existing("v1.27.3")],
                ..Case::new(&json!({}), &list)
            },
            "True",
            "Synced",
        ),
        (
            "invalid range",
            Case::new(&json!({"versionRange": "1x"}), &list),
            "False",
            "InvalidVersionRange",
        ),
        (
            "cross-namespace source",
            Case::new(
                &json!({"sourceRef": {"kind": "DebianRepositorySource", "name": "src", "namespace": "other"}}),
                &list,
            ),
            "False",
            "CrossNamespaceReference",
        ),
        (
            "cross-namespace template",
            Case::new(
                &json!({"machineImageTemplateRef": {"name": "tpl", "namespace": "other"}}),
                &list,
            ),
            "False",
            "CrossNamespaceReference",
        ),
        (
            "source missing",
            Case {
                source: Some(Err(SourceFailure::NotFound("gone".into()))),
                ..Case::new(&json!({}), &list)
            },
            "False",
            "SourceNotFound",
        ),
        (
            "source unreachable",
            Case {
                source: Some(Err(SourceFailure::Unreachable("503".into()))),
                ..Case::new(&json!({}), &list)
            },
            "False",
            "SourceUnreachable",
        ),
        (
            "no versions",
            Case::new(&json!({}), &[]),
            "False",
            "SourceHasNoVersions",
        ),
        (
            "no semver versions",
            Case::new(&json!({}), &["1.27", "latest", "1.0.0.1"]),
            "False",
            "SourceHasNoVersions",
        ),
        (
            "nothing in range",
            Case::new(&json!({"versionRange": "1.30.x"}), &list),
            "False",
            "NoVersionInRange",
        ),
        (
            "template missing",
            Case::new(&json!({}), &list),
            "False",
            "TemplateNotFound",
        ),
        (
            "invalid label value",
            Case {
                template: Some(&tpl),
                ..Case::new(&json!({"versionRange": ">=1.28.0"}), &["v1.28.0+build.1"])
            },
            "False",
            "LabelValueInvalid",
        ),
    ];
    for (what, case, status, reason) in cases {
        let decision = case.decide();
        assert_eq!(
            ready(&decision.status),
            (status.to_owned(), reason.to_owned()),
            "{what}"
        );
        let creates = created_versions(&decision);
        let want: &[&str] = if what == "first sync" {
            &["v1.27.3"]
        } else {
            &[]
        };
        assert_eq!(creates, want, "{what}");
        assert_eq!(decision.status.observed_generation, Some(3), "{what}");
    }
}

#[test]
fn strategies_choose_versions_newest_first_and_bounded() {
    let tpl = template();
    let list = [
        "v1.26.9",
        "v1.27.1",
        "v1.27.3",
        "v1.28.0",
        "v1.28.1-rc.0",
        "v1.28.2",
    ];
    let range = json!(">=1.26.0, <1.29.0");
    let run = |strategy: &str, images: Vec<Existing>| {
        Case {
            template: Some(&tpl),
            images,
            ..Case::new(
                &json!({"versionRange": range, "strategy": strategy, "maxConcurrentBuilds": 10}),
                &list,
            )
        }
        .decide()
    };
    assert_eq!(created_versions(&run("Latest", vec![])), ["v1.28.2"]);
    assert_eq!(
        created_versions(&run("LatestPerMinor", vec![])),
        ["v1.28.2", "v1.27.3", "v1.26.9"]
    );
    let all = run("AllInRange", vec![]);
    assert_eq!(
        created_versions(&all),
        ["v1.28.2", "v1.28.0", "v1.27.3", "v1.27.1", "v1.26.9"]
    );
    // Only the missing ones, and at most MAX_IMAGES_PER_RECONCILE at a time.
    let some = run("AllInRange", vec![existing("v1.28.0"), existing("v1.26.9")]);
    assert_eq!(created_versions(&some), ["v1.28.2", "v1.27.3", "v1.27.1"]);
    assert_eq!(some.status.latest_version.as_deref(), Some("v1.28.2"));
    let many: Vec<String> = (0..12).map(|p| format!("v1.27.{p}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let batch = Case {
        template: Some(&tpl),
        ..Case::new(
            &json!({"strategy": "AllInRange", "maxConcurrentBuilds": 20}),
            &many,
        )
    }
    .decide();
    assert_eq!(batch.creates.len(), MAX_IMAGES_PER_RECONCILE);
    assert_eq!(
        ready(&batch.status),
        ("False".into(), REASON_PROGRESSING.into())
    );
    assert_eq!(batch.requeue, Some(NEXT_BATCH));
    // Once all exist: Synced, and the message names ten versions and counts the rest.
    let done = Case {
        images: many.iter().map(|v| existing(v)).collect(),
        ..Case::new(&json!({"strategy": "AllInRange"}), &many)
    }
    .decide();
    assert_eq!(ready(&done.status), ("True".into(), REASON_SYNCED.into()));
    let message = &conditions::find(done.status.conditions.as_deref().unwrap(), CONDITION_READY)
        .unwrap()
        .message;
    assert!(message.ends_with("v1.27.2 and 2 more"), "{message}");
}

#[test]
fn an_existing_image_is_found_by_label_or_by_version() {
    let tpl = template();
    let list = ["v1.27.3"];
    // A v0.6 image with a random name and the two labels.
    let by_label = Case {
        template: Some(&tpl),
        images: vec![existing("v1.27.3")],
        ..Case::new(&json!({}), &list)
    };
    assert!(by_label.decide().creates.is_empty());
    // Same precedence, written without the v.
    let by_version = Case {
        template: Some(&tpl),
        images: vec![Existing {
            name: "x".into(),
            version_label: "1.27.3".into(),
            spec_version: Some("1.27.3".into()),
            building: false,
        }],
        ..Case::new(&json!({}), &list)
    };
    assert!(by_version.decide().creates.is_empty());
    let older = Case {
        template: Some(&tpl),
        images: vec![existing("v1.27.1")],
        ..Case::new(&json!({}), &list)
    };
    let decision = older.decide();
    assert_eq!(created_versions(&decision), ["v1.27.3"]);
    assert_eq!(decision.status.latest_version.as_deref(), Some("v1.27.3"));
}

#[test]
fn latest_version_is_the_highest_in_range_that_has_an_image() {
    let mut case = Case::new(&json!({}), &["v1.27.5"]);
    case.images = vec![
        existing("v1.27.5"),
        existing("v1.27.2"),
        existing("v1.28.0"),
    ];
    assert_eq!(
        case.decide().status.latest_version.as_deref(),
        Some("v1.27.5")
    );
    // The source failing does not change which images exist.
    case.source = Some(Err(SourceFailure::NotFound("gone".into())));
    assert_eq!(
        case.decide().status.latest_version.as_deref(),
        Some("v1.27.5")
    );
    // The range moves on: nothing in range has an image.
    let moved = Case {
        images: vec![existing("v1.27.5")],
        ..Case::new(&json!({"versionRange": "1.29.x"}), &["v1.27.5"])
    };
    assert_eq!(moved.decide().status.latest_version, None);
}

#[test]
fn the_image_carries_our_labels_over_the_templates_and_the_job_template() {
    let tpl = template();
    let mut case = Case {
        template: Some(&tpl),
        ..Case::new(&json!({}), &["v1.27.3"])
    };
    let mut debian = view(&["v1.27.3"]);
    debian.debian.insert("1.27.3".into(), "1.27.3-1.1".into());
    case.source = Some(Ok(debian));
    let decision = case.decide();
    let image = &decision.creates[0];
    let labels = image.metadata.labels.as_ref().unwrap();
    assert_eq!(labels[SYNCER_NAME_LABEL], "sync");
    assert_eq!(labels[KUBERNETES_VERSION_LABEL], "v1.27.3");
    assert_eq!(labels["imageBuilderVersion"], "v1");
    let annotations = image.metadata.annotations.as_ref().unwrap();
    assert_eq!(annotations[CLONED_FROM_ANNOTATION], "tpl");
    assert_eq!(annotations["team"], "infra");
    assert_eq!(annotations[DEBIAN_VERSION_ANNOTATION], "1.27.3-1.1");
    let owner = &image.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
        ("MachineImageSyncer", "sync", "uid-1")
    );
    assert_eq!(
        (owner.controller, owner.block_owner_deletion),
        (Some(true), Some(true))
    );
    assert_eq!(
        image.metadata.name.as_deref(),
        Some(image_name("sync", "uid-1", "v1.27.3").as_str())
    );
    assert_eq!(image.metadata.namespace.as_deref(), Some("team"));
    assert_eq!(
        *image.spec.job_template,
        tpl.spec.template.spec.job_template
    );
    assert_eq!(image.spec.id, None);
    // Without debianVersions, no annotation.
    let plain = Case {
        template: Some(&tpl),
        ..Case::new(&json!({}), &["v1.27.3"])
    }
    .decide();
    assert!(
        !plain.creates[0]
            .metadata
            .annotations
            .as_ref()
            .unwrap()
            .contains_key(DEBIAN_VERSION_ANNOTATION)
    );
}

#[test]
fn source_json_is_read_tolerantly() {
    let v = SourceView::from_json(&json!({"status": {
        "versions": ["v1.27.0", 7, "v1.27.1"],
        "debianVersions": [{"version": "v1.27.0", "debian": "1.27.0-2.1"}, {"version": "v1.27.1"}, "x"],
    }}));
    assert_eq!(v.versions, ["v1.27.0", "v1.27.1"]);
    assert_eq!(
        v.debian,
        BTreeMap::from([("1.27.0".to_owned(), "1.27.0-2.1".to_owned())])
    );
    assert_eq!(
        SourceView::from_json(&json!({"spec": {}})),
        SourceView::default()
    );
}

#[test]
fn paused_creates_nothing_and_keeps_ready() {
    let tpl = template();
    let mut case = Case {
        template: Some(&tpl),
        ..Case::new(&json!({"paused": true}), &["v1.27.3"])
    };
    case.source = None;
    let decision = case.decide();
    assert!(decision.creates.is_empty());
    assert!(decision.notes.is_empty());
    assert_eq!(decision.requeue, None);
    let conditions = decision.status.conditions.as_deref().unwrap();
    assert!(conditions::is_true(conditions, CONDITION_PAUSED));
    assert!(conditions::find(conditions, CONDITION_READY).is_none());
    // Un-paused: Paused=False, and the image is created.
    let running = Case {
        template: Some(&tpl),
        ..Case::new(&json!({"paused": false}), &["v1.27.3"])
    }
    .decide();
    assert!(!conditions::is_true(
        running.status.conditions.as_deref().unwrap(),
        CONDITION_PAUSED
    ));
    assert_eq!(running.creates.len(), 1);
}

#[test]
fn warnings_fire_on_transitions_only_and_steady_state_is_stable() {
    let first = Case::new(&json!({}), &["v1.27.3"]).decide();
    assert_eq!(
        first.notes,
        [Note::warning(
            EVENT_GET_TEMPLATE_FAILED,
            "MachineImageTemplate tpl not found in namespace team"
        )]
    );
    // The same failure again: the same status, no event.
    let mut again = Case::new(&json!({}), &["v1.27.3"]);
    again.syncer.status = Some(first.status.clone());
    let second = again.decide();
    assert!(second.notes.is_empty());
    assert_eq!(second.status, first.status);
    // Built: Synced, with no event, then stable.
    let mut built = Case {
        images: vec![existing("v1.27.3")],
        ..Case::new(&json!({}), &["v1.27.3"])
    };
    built.syncer.status = Some(first.status.clone());
    let third = built.decide();
    assert!(third.notes.is_empty());
    built.syncer.status = Some(third.status.clone());
    assert_eq!(built.decide().status, third.status);
    assert_eq!(third.requeue, Some(DEFAULT_INTERVAL));
}

#[test]
fn validation_defaults_and_references() {
    let v = validate(&syncer(&json!({"interval": "30m"}))).unwrap();
    assert_eq!(v.source.api_version, API_VERSION);
    assert!(v.source.is_watched());
    assert_eq!(v.source.namespace, "team");
    assert_eq!(v.interval, Some(Duration::from_secs(1800)));
    assert_eq!(v.selection, Selection::Highest);
    assert_eq!(
        validate(&syncer(&json!({"interval": 0}))).unwrap().interval,
        None
    );
    let other = validate(&syncer(
        &json!({"sourceRef": {"apiVersion": "example.com/v1", "kind": "Feed", "name": "f"}}),
    ))
    .unwrap();
    assert!(!other.source.is_watched());
    assert_eq!(other.source.kind, "Feed");
}

#[test]
fn max_images_caps_what_the_syncer_keeps_and_says_so() {
    let tpl = template();
    let many: Vec<String> = (0..6).map(|p| format!("v1.27.{p}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let case = |images: Vec<Existing>| Case {
        template: Some(&tpl),
        images,
        ..Case::new(
            &json!({"strategy": "AllInRange", "maxImages": 3, "maxConcurrentBuilds": 10}),
            &many,
        )
    };
    // Room for three: the three newest, and Ready=False naming the field.
    let first = case(vec![]).decide();
    assert_eq!(created_versions(&first), ["v1.27.5", "v1.27.4", "v1.27.3"]);
    assert_eq!(
        ready(&first.status),
        ("False".into(), REASON_MAX_IMAGES.into())
    );
    let message = &conditions::find(first.status.conditions.as_deref().unwrap(), CONDITION_READY)
        .unwrap()
        .message;
    assert!(message.contains("spec.maxImages (3)"), "{message}");
    assert!(
        message.contains("3 selected versions get no image"),
        "{message}"
    );
    assert_eq!(
        first.notes.iter().map(|n| n.reason).collect::<Vec<_>>(),
        [EVENT_CREATE_FAILED]
    );
    // At the cap: nothing more, and no event again.
    let mut at_cap = case(["v1.27.5", "v1.27.4", "v1.27.3"].map(existing).to_vec());
    at_cap.syncer.status = Some(first.status.clone());
    let again = at_cap.decide();
    assert!(again.creates.is_empty());
    assert_eq!(
        ready(&again.status),
        ("False".into(), REASON_MAX_IMAGES.into())
    );
    assert!(again.notes.is_empty());
    // Without a cap in the way, Synced as before.
    let room = Case {
        template: Some(&tpl),
        images: many.iter().map(|v| existing(v)).collect(),
        ..Case::new(&json!({"strategy": "AllInRange", "maxImages": 6}), &many)
    }
    .decide();
    assert_eq!(ready(&room.status), ("True".into(), REASON_SYNCED.into()));
}

#[test]
fn max_concurrent_builds_waits_for_running_builds() {
    let tpl = template();
    let list = ["v1.27.0", "v1.27.1", "v1.27.2", "v1.27.3"];
    let building = |version: &str| Existing {
        building: true,
        ..existing(version)
    };
    let case = |spec: Value, images: Vec<Existing>| {
        Case {
            template: Some(&tpl),
            images,
            ..Case::new(&spec, &list)
        }
        .decide()
    };
    // The default is two at once.
    let first = case(json!({"strategy": "AllInRange"}), vec![]);
    assert_eq!(created_versions(&first), ["v1.27.3", "v1.27.2"]);
    assert_eq!(
        ready(&first.status),
        ("False".into(), REASON_WAITING_FOR_BUILDS.into())
    );
    // Two still building: nothing more.
    let busy = case(
        json!({"strategy": "AllInRange"}),
        vec![building("v1.27.3"), building("v1.27.2")],
    );
    assert!(busy.creates.is_empty());
    assert_eq!(
        ready(&busy.status),
        ("False".into(), REASON_WAITING_FOR_BUILDS.into())
    );
    // One finished: one more.
    let one_done = case(
        json!({"strategy": "AllInRange"}),
        vec![existing("v1.27.3"), building("v1.27.2")],
    );
    assert_eq!(created_versions(&one_done), ["v1.27.1"]);
    // A larger budget.
    let wide = case(
        json!({"strategy": "AllInRange", "maxConcurrentBuilds": 3}),
        vec![],
    );
    assert_eq!(created_versions(&wide), ["v1.27.3", "v1.27.2", "v1.27.1"]);
    // Images that are not building (built or failed) take no build slot.
    let built = case(
        json!({"strategy": "AllInRange"}),
        vec![
            existing("v1.27.3"),
            existing("v1.27.2"),
            existing("v1.27.1"),
        ],
    );
    assert_eq!(created_versions(&built), ["v1.27.0"]);
    assert_eq!(ready(&built.status), ("True".into(), REASON_SYNCED.into()));
}
