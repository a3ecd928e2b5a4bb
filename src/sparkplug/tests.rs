use std::path::Path;

use prost::Message as _;

use super::proto::payload::metric::Value;
use super::*;

fn config(extra: &str) -> ValidConfig {
    let text = format!(
        r#"broker: {{ urls: ["mqtt://127.0.0.1:1883"], allow_insecure: true }}
identity: {{ client_id: node-1 }}
sysfs_root: /nonexistent
sensors:
  - {{ name: cpu_temp, file: /nonexistent/t }}
  - {{ name: board, file: /nonexistent/b }}
alerts:
  - {{ name: overtemp, sensor: cpu_temp, above: 80, clear_below: 75 }}
actuators:
  - {{ name: fan, file: /nonexistent/fan, values: ["0", "1"] }}
sparkplug:
  group_id: plant1
  primary_host_id: scada-1
  deadband: {{ cpu_temp: 0.5 }}
{extra}"#
    );
    let (config, findings) =
        crate::config::load_str(&text, Path::new("test.yaml")).expect("the test config is valid");
    assert!(!findings.has_errors(), "{findings:?}");
    config
}

fn reading(ts_ms: u64, cpu: f64, board: Option<f64>) -> Reading {
    let mut reading = Reading {
        ts_ms,
        synced: true,
        values: vec![(Arc::from("cpu_temp"), cpu)],
        failing: Vec::new(),
    };
    match board {
        Some(value) => reading.values.push((Arc::from("board"), value)),
        None => reading.failing.push(Arc::from("board")),
    }
    reading
}

fn decode(bytes: &[u8]) -> Payload {
    Payload::decode(bytes).expect("our own payload decodes")
}

fn metric<'a>(payload: &'a Payload, name: &str) -> &'a Metric {
    payload
        .metrics
        .iter()
        .find(|m| m.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no metric {name} in {payload:?}"))
}

#[test]
fn generated_types_are_what_prost_build_makes_of_the_proto() {
    // proto.rs is generated from proto/sparkplug_b.proto (Eclipse Tahu's) and kept in git, so
    // building fieldagent needs no protoc; FIELDAGENT_BLESS=1 writes it again.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = tempfile::tempdir().unwrap();
    prost_build::Config::new()
        .out_dir(out.path())
        .compile_protos(
            &[root.join("proto/sparkplug_b.proto")],
            &[root.join("proto")],
        )
        .expect("protoc (Debian: protobuf-compiler) compiles the proto");
    let generated =
        std::fs::read_to_string(out.path().join("org.eclipse.tahu.protobuf.rs")).unwrap();
    let kept_path = root.join("src/sparkplug/proto.rs");
    if std::env::var_os("FIELDAGENT_BLESS").is_some() {
        std::fs::write(&kept_path, &generated).unwrap();
    }
    let kept = std::fs::read_to_string(&kept_path).unwrap();
    assert!(
        kept == generated,
        "src/sparkplug/proto.rs is not what prost-build makes of proto/sparkplug_b.proto; \
         run the tests with FIELDAGENT_BLESS=1"
    );
}

#[test]
fn decodes_and_reencodes_a_payload_made_by_eclipse_tahu() {
    // tests/sparkplug/fixture.bin: `node tests/sparkplug/tahu.js encode < fixture.json`, made by
    // Tahu's JavaScript encoder (sparkplug-payload 1.0.3).
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sparkplug");
    let bytes = std::fs::read(root.join("fixture.bin")).unwrap();
    let payload = Payload::decode(&bytes[..]).expect("Tahu's bytes decode");
    assert_eq!(payload.timestamp, Some(1_700_000_000_000));
    assert_eq!(payload.seq, Some(0));
    let bd_seq = metric(&payload, "bdSeq");
    assert_eq!(bd_seq.datatype, Some(DataType::Int64 as u32));
    assert_eq!(bd_seq.value, Some(Value::LongValue(42)));
    let cpu = metric(&payload, "Sensors/cpu_temp");
    assert_eq!(
        (cpu.alias, cpu.datatype, cpu.timestamp),
        (
            Some(5),
            Some(DataType::Double as u32),
            Some(1_700_000_000_001)
        )
    );
    assert_eq!(cpu.value, Some(Value::DoubleValue(48.25)));
    let gone = metric(&payload, "Sensors/gone");
    assert_eq!((gone.is_null, gone.value.as_ref()), (Some(true), None));
    assert_eq!(
        metric(&payload, "Actuators/fan").value,
        Some(Value::StringValue("1".to_owned()))
    );
    let alert = metric(&payload, "Alerts/overtemp");
    assert_eq!(
        (alert.is_historical, alert.value.clone()),
        (Some(true), Some(Value::BooleanValue(true)))
    );
    assert_eq!(
        metric(&payload, "Counter").value,
        Some(Value::LongValue(1_234_567_890_123))
    );
    // Sparkplug carries signed 32-bit integers in the uint32 field, two's complement.
    assert_eq!(
        metric(&payload, "Offset").value,
        Some(Value::IntValue((-5i32) as u32))
    );
    assert_eq!(
        metric(&payload, "Ratio").value,
        Some(Value::FloatValue(0.5))
    );
    let properties = metric(&payload, "Properties/Hardware")
        .properties
        .as_ref()
        .expect("the property set");
    assert_eq!(properties.keys, ["engUnit"]);
    // Same bytes back: prost and protobufjs agree on the wire form.
    assert_eq!(payload.encode_to_vec(), bytes);
}

#[test]
fn topics_follow_the_namespace_with_the_client_id_substituted() {
    let config = config("");
    let topics = Topics::new(config.config().sparkplug.as_ref().unwrap(), "node-1");
    assert_eq!(topics.nbirth, "spBv1.0/plant1/NBIRTH/node-1");
    assert_eq!(topics.ndata, "spBv1.0/plant1/NDATA/node-1");
    assert_eq!(topics.ndeath, "spBv1.0/plant1/NDEATH/node-1");
    assert_eq!(topics.ncmd, "spBv1.0/plant1/NCMD/node-1");
    assert_eq!(topics.state.as_deref(), Some("spBv1.0/STATE/scada-1"));
}

#[test]
fn birth_declares_every_metric_with_name_alias_datatype_and_timestamp() {
    let mut node = Node::new(&config(""), "test board", 1_000);
    node.bd_seq = 17;
    assert!(!node.has_readings());
    assert!(node.observe(&reading(1000, 48.0, None)));
    assert!(node.has_readings());
    let birth = decode(&node.birth(2000));
    assert_eq!(birth.seq, Some(0));
    assert_eq!(birth.timestamp, Some(2000));
    assert_eq!(metric(&birth, BD_SEQ).value, Some(Value::LongValue(17)));
    assert_eq!(
        metric(&birth, BD_SEQ).datatype,
        Some(DataType::Int64 as u32)
    );
    let mut aliases = Vec::new();
    for m in birth
        .metrics
        .iter()
        .filter(|m| m.name.as_deref() != Some(BD_SEQ))
    {
        // tck-id-payloads-name-birth-data-requirement, tck-id-payloads-alias-birth-requirement,
        // tck-id-payloads-metric-datatype-req, tck-id-topics-nbirth-timestamp.
        assert!(
            m.name.is_some() && m.datatype.is_some() && m.timestamp.is_some(),
            "{m:?}"
        );
        if m.name.as_deref() == Some(REBIRTH) {
            // tck-id-operational-behavior-data-commands-rebirth-name-aliases: no alias.
            assert_eq!(m.alias, None, "{m:?}");
            continue;
        }
        aliases.push(
            m.alias
                .expect("every metric but bdSeq and Rebirth has an alias"),
        );
    }
    let count = aliases.len();
    aliases.sort_unstable();
    aliases.dedup();
    assert_eq!(aliases.len(), count, "aliases are unique");
    assert_eq!(
        metric(&birth, REBIRTH).value,
        Some(Value::BooleanValue(false))
    );
    assert_eq!(
        metric(&birth, "Sensors/cpu_temp").value,
        Some(Value::DoubleValue(48.0))
    );
    assert_eq!(metric(&birth, "Sensors/cpu_temp").timestamp, Some(1000));
    assert_eq!(metric(&birth, "Sensors/board").is_null, Some(true));
    assert_eq!(
        metric(&birth, "Alerts/overtemp").value,
        Some(Value::BooleanValue(false))
    );
    assert_eq!(metric(&birth, "Actuators/fan").is_null, Some(true));
    assert_eq!(
        metric(&birth, "Properties/Firmware").value,
        Some(Value::StringValue(format!("fieldagent {}", crate::VERSION)))
    );
    assert_eq!(
        metric(&birth, "Time Synced").value,
        Some(Value::BooleanValue(true))
    );
    for (name, datatype) in NODE_INFO {
        assert_eq!(
            metric(&birth, name).datatype,
            Some(datatype as u32),
            "{name}"
        );
    }
    assert_eq!(
        metric(&birth, "Node Info/Reconnects").value,
        Some(Value::LongValue(0))
    );
}

#[test]
fn node_info_changes_go_out_by_exception_as_uint64() {
    let mut node = Node::new(&config(""), "test board", 1_000);
    node.observe(&reading(1000, 48.0, None));
    let birth = decode(&node.birth(1000));
    let alias = metric(&birth, "Node Info/Messages Sent").alias;
    assert!(node.changes().is_empty());
    node.set("Node Info/Messages Sent", MetricValue::UInt(42), 2000);
    node.set("Node Info/Reconnects", MetricValue::UInt(0), 2000);
    let changes = node.changes();
    assert_eq!(changes.len(), 1, "only what changed: {changes:?}");
    assert_eq!(changes[0].alias, alias);
    // tck-id-payloads-metric-datatype-not-req is a SHOULD NOT we do not follow: a decoder
    // without state (Eclipse Tahu's JavaScript codec) reads no value without the datatype.
    assert_eq!(changes[0].datatype, Some(DataType::UInt64 as u32));
    assert_eq!(changes[0].value, Some(Value::LongValue(42)));
}

#[test]
fn data_reports_by_exception_with_the_deadband_and_aliases_only() {
    let mut node = Node::new(&config(""), "test board", 1_000);
    node.observe(&reading(1000, 48.0, Some(1.0)));
    let birth = decode(&node.birth(1000));
    let alias_of = |name: &str| metric(&birth, name).alias.unwrap();
    // Nothing changed: nothing to send.
    node.observe(&reading(2000, 48.0, Some(1.0)));
    assert!(node.changes().is_empty());
    // Within cpu_temp's deadband of 0.5 (of the last value sent), and board unchanged.
    node.observe(&reading(3000, 48.4, Some(1.0)));
    assert!(node.changes().is_empty());
    // Beyond it: only cpu_temp, by alias, without a name.
    node.observe(&reading(4000, 48.6, Some(1.0)));
    let changes = node.changes();
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].alias, Some(alias_of("Sensors/cpu_temp")));
    assert_eq!(changes[0].name, None);
    assert_eq!(changes[0].value, Some(Value::DoubleValue(48.6)));
    assert_eq!(changes[0].timestamp, Some(4000));
    // board has no deadband: any change counts; a failure is a null.
    node.observe(&reading(5000, 48.6, Some(1.001)));
    assert_eq!(node.changes().len(), 1);
    node.observe(&reading(6000, 48.6, None));
    let changes = node.changes();
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].alias, Some(alias_of("Sensors/board")));
    assert_eq!(changes[0].is_null, Some(true));
    // An alert state and an actuator value are metrics like the others.
    assert!(node.set("Alerts/overtemp", MetricValue::Boolean(true), 7000));
    assert!(!node.set("Alerts/nonexistent", MetricValue::Boolean(true), 7000));
    let changes = node.changes();
    assert_eq!(changes[0].alias, Some(alias_of("Alerts/overtemp")));
    assert_eq!(changes[0].value, Some(Value::BooleanValue(true)));
}

#[test]
fn seq_counts_from_the_birth_and_wraps_after_255() {
    let mut node = Node::new(&config(""), "test board", 1_000);
    node.observe(&reading(1000, 1.0, Some(1.0)));
    assert_eq!(decode(&node.birth(1000)).seq, Some(0));
    let mut seqs = Vec::new();
    for _ in 0..300 {
        seqs.push(decode(&node.data(1000, Vec::new())).seq.unwrap());
    }
    assert_eq!(seqs[..3], [1, 2, 3]);
    assert_eq!(seqs[254], 255);
    assert_eq!(seqs[255], 0);
    assert_eq!(seqs[256], 1);
    // A rebirth starts again at 0.
    assert_eq!(decode(&node.birth(1000)).seq, Some(0));
    assert_eq!(decode(&node.data(1000, Vec::new())).seq, Some(1));
}

#[test]
fn ncmd_rebirth_and_actuator_writes_by_name_or_alias() {
    let mut node = Node::new(&config(""), "test board", 1_000);
    node.observe(&reading(1000, 1.0, Some(1.0)));
    let birth = decode(&node.birth(1000));
    let fan_alias = metric(&birth, "Actuators/fan").alias.unwrap();
    let ncmd = |metrics: Vec<Metric>| {
        Payload {
            timestamp: Some(1),
            metrics,
            ..Payload::default()
        }
        .encode_to_vec()
    };
    let named = |name: &str, value: Value| Metric {
        name: Some(name.to_owned()),
        value: Some(value),
        ..Metric::default()
    };
    assert_eq!(
        node.commands(&ncmd(vec![named(REBIRTH, Value::BooleanValue(true))])),
        Ok(vec![NodeCommand::Rebirth])
    );
    assert!(matches!(
        node.commands(&ncmd(vec![named(REBIRTH, Value::BooleanValue(false))]))
            .unwrap()[..],
        [NodeCommand::Ignored { .. }]
    ));
    assert_eq!(
        node.commands(&ncmd(vec![
            named("Actuators/fan", Value::StringValue("1".to_owned())),
            Metric {
                alias: Some(fan_alias),
                value: Some(Value::IntValue(0)),
                ..Metric::default()
            },
            named("Actuators/pump", Value::BooleanValue(true)),
        ])),
        Ok(vec![
            NodeCommand::Write {
                actuator: "fan".to_owned(),
                value: "1".to_owned()
            },
            NodeCommand::Write {
                actuator: "fan".to_owned(),
                value: "0".to_owned()
            },
            // Unknown actuators are the allow-list's business (the event loop refuses them).
            NodeCommand::Write {
                actuator: "pump".to_owned(),
                value: "true".to_owned()
            },
        ])
    );
    let ignored = node
        .commands(&ncmd(vec![
            named("Sensors/cpu_temp", Value::DoubleValue(1.0)),
            Metric {
                alias: Some(9999),
                ..Metric::default()
            },
        ]))
        .unwrap();
    assert!(
        matches!(&ignored[..], [NodeCommand::Ignored { metric: a, .. }, NodeCommand::Ignored { metric: b, .. }] if a == "Sensors/cpu_temp" && b == "alias 9999"),
        "{ignored:?}"
    );
    let garbage = node.commands(b"\xff\xff\xff not protobuf");
    assert!(garbage
        .unwrap_err()
        .starts_with("not a Sparkplug B payload"));
}

#[test]
fn host_state_is_sparkplug_3_json_or_the_older_texts() {
    assert_eq!(
        host_state(br#"{"online":true,"timestamp":1700000000000}"#),
        Ok(HostState {
            online: true,
            timestamp: 1_700_000_000_000
        })
    );
    assert_eq!(
        host_state(b"OFFLINE"),
        Ok(HostState {
            online: false,
            timestamp: 0
        })
    );
    assert!(host_state(b"{\"up\":1}").unwrap_err().contains("online"));
}

#[test]
fn death_carries_the_sessions_bd_seq() {
    let death = Payload::decode(&death(200, 5_000)[..]).unwrap();
    assert_eq!(death.metrics[0].name.as_deref(), Some(BD_SEQ));
    assert_eq!(death.metrics[0].value, Some(Value::LongValue(200)));
    assert_eq!(death.timestamp, Some(5_000));
    assert_eq!(death.seq, None);
}

/// Store and forward's record: what a pass would have sent, by name with the original
/// timestamps, sent later as NDATA marked historical with the session's next seq.
#[test]
fn a_kept_record_goes_out_as_historical_ndata_with_its_own_timestamps() {
    let mut node = Node::new(&config(""), "test board", 1_000);
    node.observe(&reading(1000, 48.0, None));
    // Offline from the start: the first record holds every metric, the next only what changed.
    let first = node.changes_named();
    assert!(first.iter().any(|(name, _, _)| name == "Sensors/cpu_temp"));
    assert!(first.iter().all(|(name, _, _)| name != REBIRTH));
    node.observe(&reading(2000, 49.5, None));
    let second = History {
        ts: 2000,
        metrics: node.changes_named(),
    };
    assert_eq!(
        second.metrics,
        vec![(
            "Sensors/cpu_temp".to_owned(),
            MetricValue::Double(49.5),
            2000
        )]
    );
    let stored = second.encode();
    let mut back = History::decode(&stored).unwrap();
    assert_eq!(back, second);
    assert!(History::decode(br#"{"ts":1,"values":{}}"#).is_err());
    // A metric the node no longer declares is left out.
    back.metrics
        .push(("Sensors/gone".to_owned(), MetricValue::Double(1.0), 2000));
    let birth = decode(&node.birth(3000));
    let alias = metric(&birth, "Sensors/cpu_temp").alias;
    let ndata = decode(&back.ndata(&mut node).unwrap());
    assert_eq!(ndata.seq, Some(1), "the next seq after the birth's 0");
    assert_eq!(ndata.timestamp, Some(2000));
    assert_eq!(ndata.metrics.len(), 1);
    let m = &ndata.metrics[0];
    assert_eq!(m.alias, alias);
    assert_eq!(m.is_historical, Some(true));
    assert_eq!(m.timestamp, Some(2000));
    assert_eq!(m.value, Some(Value::DoubleValue(49.5)));
    // Nothing of it declared: nothing to send.
    let none = History {
        ts: 1,
        metrics: vec![("Sensors/gone".to_owned(), MetricValue::Null, 1)],
    };
    assert_eq!(none.ndata(&mut node), None);
    // A non-finite value is kept as null, which JSON can hold.
    let odd = History {
        ts: 1,
        metrics: vec![(
            "Sensors/cpu_temp".to_owned(),
            MetricValue::Double(f64::NAN),
            1,
        )],
    };
    assert_eq!(
        History::decode(&odd.encode()).unwrap().metrics[0].1,
        MetricValue::Null
    );
}

/// A pass with more changes than one message may hold is kept as several records of the same
/// time, each within the bound once encoded, every metric once and in order; a metric never set
/// since start goes out with the record's time, not 1970.
#[test]
fn a_large_pass_is_kept_as_records_within_the_message_bound() {
    let metrics: Vec<(String, MetricValue, u64)> = (0..5000)
        .map(|i| {
            let value = match i % 3 {
                0 => MetricValue::Double(-1.234_567_890_123e-300),
                1 => MetricValue::UInt(u64::MAX),
                _ => MetricValue::Text("\"quoted\" \\ text".repeat(4)),
            };
            (
                format!("Sensors/gateway_{i:05}"),
                value,
                1_700_000_000_000 + i,
            )
        })
        .collect();
    let records = History::split(42, metrics.clone(), 16 * 1024);
    assert!(records.len() > 10, "{} records", records.len());
    for record in &records {
        assert_eq!(record.ts, 42);
        let bytes = record.encode().len();
        assert!(bytes <= 16 * 1024, "a record of {bytes} bytes");
    }
    let back: Vec<_> = records.into_iter().flat_map(|r| r.metrics).collect();
    assert_eq!(back, metrics);
    // One metric larger than the bound is still kept, alone.
    let huge = vec![(
        "Sensors/big".to_owned(),
        MetricValue::Text("x".repeat(4096)),
        1,
    )];
    assert_eq!(History::split(1, huge.clone(), 1024).len(), 1);
    assert!(History::split(1, Vec::new(), 1024).is_empty());

    let mut node = Node::new(&config(""), "test board", 1_000);
    node.observe(&reading(1000, 48.0, None));
    node.birth(3000);
    let unset = History {
        ts: 2500,
        metrics: vec![("Sensors/cpu_temp".to_owned(), MetricValue::Double(1.0), 0)],
    };
    let ndata = decode(&unset.ndata(&mut node).unwrap());
    assert_eq!(ndata.metrics[0].timestamp, Some(2500));
}
