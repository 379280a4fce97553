//! The deployment recipes under `deploy/` say what docs/deploy.md promises, and agree with the
//! image and the server. Their syntax is checked by real tools in CI (`tools/deploy/check`:
//! `kubernetes-validate` against the Kubernetes schemas, `docker-compose config`,
//! `systemd-analyze verify` and `security`); this file checks what no schema knows:
//!
//! - Kubernetes: two replicas, readiness and liveness probes on `/health` at the server's port,
//!   resources, a read-only root, non-root as the image's user, the Service and the
//!   PodDisruptionBudget selecting the pods, the Secret holding the tokens and bucket keys, the
//!   bucket topology with `AUTH_SOURCE=bucket`, every file in the kustomization;
//! - Compose: profile `single` on a named volume, profile `replicas` with two servers on one
//!   bucket with `AUTH_SOURCE=bucket` behind the load balancer, which names both;
//! - systemd: the hardening of docs/operations.md, the storage its only writable path;
//! - every variable any recipe, the Containerfile or `tools/image/build` sets is one the server
//!   reads (`rack-registry serve --help`), and the Containerfile and `tools/image/build` make
//!   the same image (environment, labels, user).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde_json::Value;

fn deploy() -> PathBuf {
    common::repo_root().join("deploy")
}

fn read(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every document of a YAML file, merge keys (`<<:`) applied, as JSON values.
fn yaml_docs(path: &std::path::Path) -> Vec<Value> {
    use serde::Deserialize;
    let text = read(path);
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| {
            let mut v =
                serde_norway::Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            // One pass merges one level: `replica-2: {<<: *replica}` brings in replica-1's
            // own `<<: *registry`, merged by the next pass.
            for _ in 0..4 {
                v.apply_merge().unwrap();
            }
            serde_json::to_value(v).unwrap()
        })
        .filter(|v| !v.is_null())
        .collect()
}

/// The variables the server reads: every `[env: NAME]` of `serve --help`.
fn server_variables() -> BTreeSet<String> {
    let (code, out) = common::run_cli(&common::repo_root(), &[], &["serve", "--help"]);
    assert_eq!(code, Some(0), "{out}");
    let names: BTreeSet<String> = out
        .split("[env: ")
        .skip(1)
        .map(|s| s.split(']').next().unwrap().to_owned())
        .collect();
    assert!(
        names.contains("STORAGE_ROOT") && names.contains("AUTH_SOURCE"),
        "{names:?}"
    );
    names
}

/// Kubernetes objects of deploy/kubernetes by `Kind/name`.
fn kubernetes() -> BTreeMap<String, Value> {
    let mut objects = BTreeMap::new();
    for entry in std::fs::read_dir(deploy().join("kubernetes")).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap() == "kustomization.yaml" {
            continue;
        }
        for doc in yaml_docs(&path) {
            let key = format!(
                "{}/{}",
                doc["kind"].as_str().unwrap(),
                doc["metadata"]["name"].as_str().unwrap()
            );
            assert_eq!(
                doc["metadata"]["namespace"].as_str().or(Some("rack-registry")),
                Some("rack-registry")
            );
            assert!(objects.insert(key.clone(), doc).is_none(), "{key} twice");
        }
    }
    objects
}

#[test]
fn the_kubernetes_deployment_runs_two_probed_read_only_non_root_replicas_on_a_bucket() {
    let k = kubernetes();
    let deployment = &k["Deployment/rack-registry"];
    let spec = &deployment["spec"];
    assert_eq!(spec["replicas"], 2);
    assert_eq!(spec["strategy"]["rollingUpdate"]["maxUnavailable"], 0);
    let pod = &spec["template"]["spec"];
    let labels = &spec["template"]["metadata"]["labels"];
    assert_eq!(&spec["selector"]["matchLabels"], labels);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["runAsUser"], 10001, "the image's user");
    let containers = pod["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    let port = c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "http")
        .expect("a port named http");
    assert_eq!(port["containerPort"], 8080, "the server's default PORT");
    for probe in ["readinessProbe", "livenessProbe"] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["path"], "/health", "{probe}");
        assert_eq!(get["port"], "http", "{probe}");
        assert!(c[probe]["timeoutSeconds"].as_u64().unwrap() <= 5, "{probe}");
    }
    for kind in ["requests", "limits"] {
        assert!(
            c["resources"][kind]["memory"].is_string(),
            "resources.{kind}.memory"
        );
    }
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    // With a read-only root, /data (STORAGE_ROOT: upload staging) must be a writable volume.
    let env: BTreeMap<&str, &str> = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap(), e["value"].as_str().unwrap()))
        .collect();
    assert_eq!(env["STORAGE_ROOT"], "/data");
    let mount = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == "/data")
        .expect("/data mounted");
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    assert!(volume["emptyDir"].is_object(), "{volume}");

    // Settings and secrets come from the ConfigMap and the Secret, which hold the bucket
    // topology and the tokens.
    let from: Vec<(&str, &str)> = c["envFrom"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            if let Some(n) = e["configMapRef"]["name"].as_str() {
                ("ConfigMap", n)
            } else {
                ("Secret", e["secretRef"]["name"].as_str().unwrap())
            }
        })
        .collect();
    assert_eq!(
        from,
        vec![("ConfigMap", "rack-registry"), ("Secret", "rack-registry")]
    );
    let config = &k["ConfigMap/rack-registry"]["data"];
    assert_eq!(config["STORAGE_BACKEND"], "s3");
    assert_eq!(config["AUTH_SOURCE"], "bucket");
    assert!(config["S3_BUCKET"].is_string() && config["S3_ENDPOINT"].is_string());
    let secret = &k["Secret/rack-registry"]["stringData"];
    for key in ["ADMIN_TOKEN_SHA256", "S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY"] {
        assert!(secret[key].is_string(), "Secret/rack-registry has {key}");
    }
    assert!(
        config.get("ADMIN_TOKEN_SHA256").is_none() && config.get("S3_SECRET_ACCESS_KEY").is_none(),
        "no secret in the ConfigMap"
    );

    // The Service and the PodDisruptionBudget select these pods; the budget keeps one.
    let service = &k["Service/rack-registry"]["spec"];
    for (key, value) in service["selector"].as_object().unwrap() {
        assert_eq!(&labels[key], value, "Service selector {key}");
    }
    assert_eq!(service["ports"][0]["targetPort"], "http");
    let pdb = &k["PodDisruptionBudget/rack-registry"]["spec"];
    assert_eq!(&pdb["selector"]["matchLabels"], labels);
    assert_eq!(pdb["minAvailable"], 1);

    // The policy job pushes the auth Secret's file with the same bucket settings.
    let job = &k["Job/rack-registry-auth-push"]["spec"]["template"]["spec"];
    let jc = &job["containers"][0];
    assert_eq!(
        jc["args"],
        serde_json::json!(["auth", "push", "/etc/rack-registry/auth.json"])
    );
    assert_eq!(jc["envFrom"], c["envFrom"]);
    assert_eq!(jc["securityContext"]["readOnlyRootFilesystem"], true);
    let auth = k["Secret/rack-registry-auth"]["stringData"]["auth.json"]
        .as_str()
        .unwrap();
    serde_json::from_str::<Value>(auth).expect("auth.json is JSON");

    // Every object file is in the kustomization.
    let kustomization = &yaml_docs(&deploy().join("kubernetes/kustomization.yaml"))[0];
    let listed: BTreeSet<&str> = kustomization["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    let files: BTreeSet<String> = std::fs::read_dir(deploy().join("kubernetes"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "kustomization.yaml")
        .collect();
    assert_eq!(listed, files.iter().map(String::as_str).collect());

    // Only variables the server reads.
    let known = server_variables();
    let mut used: Vec<&str> = config.as_object().unwrap().keys().map(String::as_str).collect();
    used.extend(secret.as_object().unwrap().keys().map(String::as_str));
    used.extend(env.keys());
    for name in used {
        assert!(known.contains(name), "{name} is not a variable of the server");
    }
}

#[test]
fn the_compose_file_has_a_single_server_and_two_replicas_on_a_bucket_behind_a_balancer() {
    let compose = &yaml_docs(&deploy().join("compose.yaml"))[0];
    let services = compose["services"].as_object().unwrap();
    let profile = |name: &str| -> Vec<&str> {
        services
            .iter()
            .filter(|(_, s)| s["profiles"].as_array().unwrap().iter().any(|p| p == name))
            .map(|(n, _)| n.as_str())
            .collect()
    };
    let ours = |name: &str| {
        services[name]["image"]
            .as_str()
            .unwrap()
            .contains("rack-registry")
    };
    let known = server_variables();
    for (name, service) in services.iter().filter(|(n, _)| ours(n)) {
        assert_eq!(service["read_only"], true, "{name}");
        assert_eq!(service["build"]["dockerfile"], "Containerfile", "{name}");
        for var in service["environment"].as_object().unwrap().keys() {
            assert!(
                known.contains(var),
                "{name}: {var} is not a variable of the server"
            );
        }
    }

    // single: one server, storage in a named volume at /data.
    assert_eq!(profile("single"), vec!["registry"]);
    let single = &services["registry"];
    assert_eq!(single["volumes"][0], "rack-data:/data");
    assert!(compose["volumes"]["rack-data"].is_null() || compose["volumes"]["rack-data"].is_object());
    assert!(compose["volumes"].as_object().unwrap().contains_key("rack-data"));
    assert_eq!(single["healthcheck"]["test"][1], "/usr/local/bin/rack-registry");

    // replicas: two servers on the same bucket, policy from the bucket, behind lb.
    let replicas: Vec<&str> = profile("replicas")
        .into_iter()
        .filter(|n| n.starts_with("replica-"))
        .collect();
    assert_eq!(replicas, vec!["replica-1", "replica-2"]);
    let env = |n: &str| services[n]["environment"].clone();
    assert_eq!(env("replica-1"), env("replica-2"));
    let e = env("replica-1");
    assert_eq!(e["STORAGE_BACKEND"], "s3");
    assert_eq!(e["AUTH_SOURCE"], "bucket");
    assert_eq!(e["S3_ENDPOINT"], "http://minio:9000");
    assert_eq!(services["auth-push"]["environment"]["S3_BUCKET"], e["S3_BUCKET"]);
    assert_ne!(
        services["replica-1"]["volumes"], services["replica-2"]["volumes"],
        "each replica its own scratch"
    );
    let lb = read(&deploy().join("compose/lb.conf"));
    for r in &replicas {
        assert!(lb.contains(&format!("server {r}:8080")), "lb.conf names {r}");
    }
    assert_eq!(services["lb"]["ports"][0], "8080:8080");
    assert!(profile("replicas").contains(&"minio"));
    serde_json::from_str::<Value>(&read(&deploy().join("compose/auth.json"))).unwrap();
}

/// `Key=value` lines of a systemd unit (every value of a repeated key).
fn unit_settings(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut settings: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.starts_with('[') {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            settings.entry(k.to_owned()).or_default().push(v.to_owned());
        }
    }
    settings
}

#[test]
fn the_systemd_unit_is_hardened_and_writes_only_its_storage() {
    let unit = unit_settings(&read(&deploy().join("systemd/rack-registry.service")));
    let one = |k: &str| -> &str {
        let v = unit.get(k).unwrap_or_else(|| panic!("{k} is set"));
        assert_eq!(v.len(), 1, "{k} once");
        &v[0]
    };
    for (k, v) in [
        ("DynamicUser", "yes"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("StateDirectory", "rack-registry"),
        ("ReadWritePaths", "/var/lib/rack-registry"),
        ("KillSignal", "SIGTERM"),
        ("ExecStart", "/usr/local/bin/rack-registry serve"),
        ("CapabilityBoundingSet", ""),
    ] {
        assert_eq!(one(k), v, "{k}");
    }
    let env: BTreeMap<&str, &str> = unit["Environment"]
        .iter()
        .map(|e| e.split_once('=').unwrap())
        .collect();
    // Inside the state directory, which systemd creates empty: the server makes a new root
    // only where there is no directory yet.
    assert_eq!(env["STORAGE_ROOT"], "/var/lib/rack-registry/data");
    let known = server_variables();
    for name in env.keys() {
        assert!(known.contains(*name), "{name} is not a variable of the server");
    }
}

#[test]
fn the_containerfile_and_the_image_script_make_the_same_image() {
    let containerfile = read(&common::repo_root().join("Containerfile"));
    let script = read(&common::repo_root().join("tools/image/build"));
    let known = server_variables();
    let envs: Vec<&str> = script
        .lines()
        .filter_map(|l| l.trim().strip_prefix("--env "))
        .map(|l| l.trim_end_matches(" \\").trim())
        .collect();
    assert!(envs.contains(&"STORAGE_ROOT=/data"), "{envs:?}");
    for kv in &envs {
        assert!(containerfile.contains(kv), "the Containerfile sets {kv}");
        let name = kv.split('=').next().unwrap();
        assert!(
            known.contains(name) || name == "SSL_CERT_FILE",
            "{name} is not a variable of the server"
        );
    }
    for label in [
        "org.opencontainers.image.source",
        "org.opencontainers.image.version",
        "org.opencontainers.image.licenses",
        "org.opencontainers.image.revision",
    ] {
        assert!(containerfile.contains(label) && script.contains(label), "{label}");
    }
    assert!(containerfile.contains("USER 10001:10001") && script.contains("UID_GID=10001"));
    assert!(containerfile.contains("EXPOSE 8080") && script.contains("--port 8080"));
    assert!(containerfile.contains("FROM scratch"));
    assert!(
        containerfile.contains(r#"ENTRYPOINT ["/usr/local/bin/rack-registry"]"#)
            && script.contains(r#"--entrypoint '["/usr/local/bin/rack-registry"]'"#)
    );
}
