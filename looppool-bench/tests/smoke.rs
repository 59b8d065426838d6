//! The bench binary end to end, with small counts: the peer harness's record
//! format, and the JSON rows of the main mode.

use std::process::Command;

use serde_json::Value;

fn bench(args: &[&str]) -> Vec<Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_looppool-bench"))
        .args(args)
        .output()
        .expect("the bench runs");
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[test]
fn peer_records_have_the_harness_fields() {
    for (args, extra) in [
        (vec!["--workload", "W1", "--n", "2000"], vec!["startup_s"]),
        (
            vec!["--workload", "W2", "--n", "200"],
            vec!["startup_s", "p50_us", "p99_us"],
        ),
        (
            vec!["--workload", "W5", "--n", "4"],
            vec!["startup_s", "tasks_s"],
        ),
        (
            vec!["--workload", "W6", "--workers", "2"],
            vec!["start_s", "stop_s"],
        ),
    ] {
        let lines = bench(&args);
        assert_eq!(lines.len(), 1, "exactly one line for {args:?}");
        let rec = &lines[0];
        assert_eq!(rec["peer"], "looppool-rs");
        assert_eq!(rec["workload"], args[1]);
        assert!(rec["params"].is_object());
        assert!(rec["wall_s"].as_f64().is_some_and(|w| w > 0.0), "{rec}");
        assert!(rec["rate_unit"].is_string());
        for key in extra {
            assert!(rec[key].as_f64().is_some(), "{key} missing in {rec}");
        }
    }
}

#[test]
fn json_rows_have_the_required_fields() {
    let rows = bench(&["--quick", "--json", "--only", "W3,W6"]);
    let names: Vec<&str> = rows
        .iter()
        .map(|r| r["workload"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"W3") && names.contains(&"W6-8"),
        "{names:?}"
    );
    for row in &rows {
        for key in ["workload", "value", "unit", "limit", "ratio", "target_met"] {
            assert!(row.get(key).is_some(), "{key} missing in {row}");
        }
    }
    let w3 = rows.iter().find(|r| r["workload"] == "W3").unwrap();
    assert!(w3["target_met"].is_boolean());
    assert_eq!(w3["limit_of"], "ideal");
}
