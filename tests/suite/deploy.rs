//! The deployment files (`Dockerfile`, `deploy/`), checked without a
//! container engine: the YAML parses, the Compose services and Kubernetes
//! objects carry the probes, volumes, secrets and replica count a hosted
//! gateway needs and agree with each other, the policy configs they ship
//! load with kt's own parser, and every command line in them is one the
//! real `kt` accepts.

use clap::Parser;
use keeptrusts::cli::{arguments, Cli};
use keeptrusts::config::{Config, Storage};
use serde_yaml::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn yaml(path: &str) -> Value {
    serde_yaml::from_str(&read(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .unwrap_or_else(|| panic!("not a list: {v:?}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

/// The command line parses as `kt` would parse it, and runs the gateway
/// listening on every interface.
fn assert_gateway_command(args: &[String], what: &str) {
    let argv = std::iter::once("kt".to_string()).chain(args.iter().cloned());
    let parsed = Cli::try_parse_from(arguments(argv.map(Into::into)));
    assert!(
        parsed.is_ok(),
        "{what}: kt rejects {args:?}: {}",
        parsed.err().unwrap()
    );
    let joined = args.join(" ");
    assert!(joined.contains("gateway run"), "{what}: {joined}");
    assert!(
        joined.contains("--listen 0.0.0.0:41002"),
        "{what}: {joined}"
    );
}

fn policy_config(text: &str, what: &str) -> Config {
    Config::parse(text, Path::new(what)).unwrap_or_else(|e| panic!("{what}: {e}"))
}

#[test]
fn the_dockerfile_builds_in_stages_and_runs_kt_unprivileged() {
    let text = read("Dockerfile");
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    let instr = |name: &str| -> Vec<&str> {
        lines
            .iter()
            .filter_map(|l| l.strip_prefix(name).map(str::trim))
            .collect()
    };
    assert!(instr("FROM ").len() >= 2, "multi-stage build");
    assert!(
        instr("COPY --from=build")
            .iter()
            .any(|c| c.contains("/usr/local/bin/kt")),
        "only the binary reaches the runtime image"
    );
    let user = instr("USER ");
    let user = user.last().expect("a USER instruction");
    assert!(
        !user.starts_with("root") && !user.starts_with("0"),
        "USER {user}"
    );
    assert_eq!(instr("EXPOSE "), ["41002"]);
    assert!(instr("VOLUME ").iter().any(|v| v.contains("/var/lib/kt")));
    assert!(instr("ENV ")
        .iter()
        .any(|v| v.contains("KEEPTRUSTS_HOME=/var/lib/kt")));
    assert_eq!(instr("ENTRYPOINT "), [r#"["kt"]"#]);
    // The last `CMD` (an earlier one continues the HEALTHCHECK).
    let cmd: Vec<String> = serde_json::from_str(instr("CMD ").last().unwrap()).unwrap();
    assert_gateway_command(&cmd, "Dockerfile CMD");
    assert!(
        text.contains("/healthz"),
        "a HEALTHCHECK on the probe route"
    );
    // What the build copies must exist (Cargo needs the declared benches).
    for path in ["Cargo.toml", "Cargo.lock", "src", "benches"] {
        assert!(repo(path).exists(), "{path}");
    }
    let ignore = read(".dockerignore");
    assert!(ignore.lines().any(|l| l.trim() == "target/"));
    assert!(
        ignore.contains("-key.pem"),
        "CA keys never enter the build context"
    );
}

#[test]
fn compose_runs_the_gateway_with_postgres_redis_and_health_checks() {
    let compose = yaml("deploy/docker-compose.yml");
    let services = compose["services"].as_mapping().unwrap();
    let names: BTreeSet<&str> = services.keys().map(|k| k.as_str().unwrap()).collect();
    assert_eq!(names, BTreeSet::from(["gateway", "postgres", "redis"]));
    for (name, svc) in services {
        let test = strings(&svc["healthcheck"]["test"]);
        assert!(!test.is_empty(), "{name:?} has a health check");
        assert!(svc["restart"].as_str().is_some(), "{name:?} restarts");
    }
    let gw = &compose["services"]["gateway"];
    assert_eq!(gw["build"]["dockerfile"], "Dockerfile");
    assert!(repo("deploy")
        .join(gw["build"]["context"].as_str().unwrap())
        .join("Dockerfile")
        .is_file());
    let command = strings(&gw["command"]);
    assert_gateway_command(&command, "compose gateway command");
    assert!(strings(&gw["healthcheck"]["test"])
        .iter()
        .any(|t| t.ends_with("/readyz")));
    for dep in ["postgres", "redis"] {
        assert_eq!(
            gw["depends_on"][dep]["condition"], "service_healthy",
            "{dep}"
        );
    }
    let grace = gw["stop_grace_period"].as_str().unwrap();
    let secs: u64 = grace.trim_end_matches('s').parse().unwrap();
    assert!(secs > 30, "longer than kt's 30 s drain: {grace}");
    let env = gw["environment"].as_mapping().unwrap();
    for key in ["OPENAI_API_KEY", "ANTHROPIC_API_KEY"] {
        assert!(env.contains_key(key), "{key}");
    }

    // The mounted policy config, and the volume for the CA and the spool.
    let volumes = strings(&gw["volumes"]);
    let config_mount = volumes
        .iter()
        .find(|v| v.ends_with("/etc/kt/policy-config.yaml:ro"))
        .expect("policy config mounted read-only");
    assert!(command.iter().any(|a| a == "/etc/kt/policy-config.yaml"));
    let host_file = config_mount.split(':').next().unwrap();
    let config = policy_config(
        &read(&format!("deploy/{host_file}")),
        "deploy/policy-config.yaml",
    );
    assert!(
        volumes.iter().any(|v| v.ends_with(":/var/lib/kt")),
        "{volumes:?}"
    );
    assert!(compose["volumes"]
        .as_mapping()
        .unwrap()
        .contains_key("kt-data"));

    // The config points at the compose file's own services.
    let Some(Storage::Postgres { url }) = &config.storage else {
        panic!("hosted config stores in PostgreSQL: {:?}", config.storage)
    };
    let pg = &compose["services"]["postgres"]["environment"];
    let (user, pass, db) = (
        pg["POSTGRES_USER"].as_str().unwrap(),
        pg["POSTGRES_PASSWORD"].as_str().unwrap(),
        pg["POSTGRES_DB"].as_str().unwrap(),
    );
    assert_eq!(url, &format!("postgres://{user}:{pass}@postgres:5432/{db}"));
    assert!(read("deploy/policy-config.yaml").contains("backend: redis://redis:6379/"));
    limits_are_shared(&config, "deploy/policy-config.yaml");
    assert_eq!(config.auth.required, Some(true));
}

/// A hosted example's rate limits and budgets count in Redis: per replica,
/// N replicas would allow N times each limit.
fn limits_are_shared(config: &keeptrusts::config::Config, what: &str) {
    use keeptrusts::config::{CounterBackend, PolicyOptions};
    let backends: Vec<&CounterBackend> = config
        .policies
        .iter()
        .filter_map(|p| match &p.options {
            PolicyOptions::RateLimit(o) => Some(&o.backend),
            PolicyOptions::Budget(o) => Some(&o.backend),
            _ => None,
        })
        .collect();
    assert_eq!(backends.len(), 2, "{what}: a rate limit and a budget");
    for b in backends {
        assert!(
            matches!(b, CounterBackend::Redis { url, .. } if url.starts_with("redis://redis")),
            "{what}: {b:?}"
        );
    }
}

/// The Kubernetes objects by kind.
fn kubernetes() -> Vec<(String, Value)> {
    let kustomization = yaml("deploy/kubernetes/kustomization.yaml");
    let listed = strings(&kustomization["resources"]);
    let on_disk: BTreeSet<String> = std::fs::read_dir(repo("deploy/kubernetes"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n != "kustomization.yaml")
        .collect();
    assert_eq!(
        listed.iter().cloned().collect::<BTreeSet<_>>(),
        on_disk,
        "kustomization lists every file"
    );
    listed
        .iter()
        .map(|f| {
            let v = yaml(&format!("deploy/kubernetes/{f}"));
            (v["kind"].as_str().unwrap().to_string(), v)
        })
        .collect()
}

fn object<'a>(objects: &'a [(String, Value)], kind: &str) -> &'a Value {
    &objects
        .iter()
        .find(|(k, _)| k == kind)
        .unwrap_or_else(|| panic!("no {kind}"))
        .1
}

#[test]
fn kubernetes_runs_two_probed_replicas_that_drain_and_share_config_and_secrets() {
    let objects = kubernetes();
    let dep = object(&objects, "Deployment");
    assert_eq!(dep["spec"]["replicas"], 2);
    let labels = &dep["spec"]["template"]["metadata"]["labels"];
    assert_eq!(&dep["spec"]["selector"]["matchLabels"], labels);
    let pod = &dep["spec"]["template"]["spec"];
    assert!(pod["terminationGracePeriodSeconds"].as_u64().unwrap() > 30);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let c = &pod["containers"][0];
    assert_gateway_command(&strings(&c["args"]), "Deployment args");
    let port = c["ports"][0]["containerPort"].as_u64().unwrap();
    assert_eq!(port, 41002);
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(
            c[probe]["httpGet"]["port"], c["ports"][0]["name"],
            "{probe}"
        );
    }
    assert!(
        c["lifecycle"]["preStop"].is_mapping(),
        "a pause before the drain"
    );
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    let env: Vec<&str> = c["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert!(env.contains(&"KT_REPLICA_ID"), "each replica its own chain");

    // Volumes: the policy ConfigMap, the CA Secret, the data folder.
    let volumes = pod["volumes"].as_sequence().unwrap();
    let volume = |name: &str| {
        volumes
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("volume {name}"))
    };
    let cm = object(&objects, "ConfigMap");
    assert_eq!(
        volume("config")["configMap"]["name"],
        cm["metadata"]["name"]
    );
    assert!(volume("ca")["secret"]["secretName"].is_string());
    assert!(volume("data")["emptyDir"].is_mapping());
    let mounts: Vec<&str> = c["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|m| m["mountPath"].as_str().unwrap())
        .collect();
    assert!(
        mounts.contains(&"/etc/kt") && mounts.contains(&"/var/lib/kt"),
        "{mounts:?}"
    );
    let init = &pod["initContainers"][0];
    let script = strings(&init["command"]).join(" ");
    assert!(
        script.contains("-m 0600") && script.contains("kt-ca-key.pem"),
        "{script}"
    );

    // The provider keys and storage URL come from the Secret.
    let secret = object(&objects, "Secret");
    assert_eq!(
        c["envFrom"][0]["secretRef"]["name"],
        secret["metadata"]["name"]
    );
    let data = secret["stringData"].as_mapping().unwrap();
    for key in ["OPENAI_API_KEY", "ANTHROPIC_API_KEY", "KEEPTRUSTS_STORAGE"] {
        assert!(data.contains_key(key), "{key}");
    }
    let storage = data.get("KEEPTRUSTS_STORAGE").unwrap().as_str().unwrap();
    assert!(
        matches!(Storage::parse(storage), Ok(Storage::Postgres { .. })),
        "{storage}"
    );
    let text = cm["data"]["policy-config.yaml"].as_str().unwrap();
    let config = policy_config(text, "ConfigMap policy-config.yaml");
    assert_eq!(config.auth.required, Some(true));
    assert!(text.contains("backend: redis://"), "a shared cache");
    limits_are_shared(&config, "ConfigMap policy-config.yaml");

    // The Service and the PodDisruptionBudget select the pods.
    let svc = object(&objects, "Service");
    assert_eq!(&svc["spec"]["selector"], labels);
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], c["ports"][0]["name"]);
    let pdb = object(&objects, "PodDisruptionBudget");
    assert_eq!(&pdb["spec"]["selector"]["matchLabels"], labels);
    assert_eq!(pdb["spec"]["minAvailable"], 1);
}

#[test]
fn the_nginx_example_keeps_streams_flowing() {
    let conf = read("deploy/nginx/kt.conf");
    let directives: Vec<&str> = conf
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    for wanted in [
        "proxy_buffering off;",
        "proxy_request_buffering off;",
        "proxy_http_version 1.1;",
        "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
    ] {
        assert!(directives.contains(&wanted), "missing `{wanted}`");
    }
    assert!(directives
        .iter()
        .any(|d| d.starts_with("proxy_read_timeout")));
    assert!(directives
        .iter()
        .any(|d| d.starts_with("server 127.0.0.1:41002")));
}

#[test]
fn a_repeated_program_name_is_dropped() {
    let args = |v: &[&str]| -> Vec<String> {
        arguments(v.iter().map(Into::into))
            .into_iter()
            .map(|s| s.into_string().unwrap())
            .collect()
    };
    assert_eq!(
        args(&["kt", "kt", "gateway", "run"]),
        ["kt", "gateway", "run"]
    );
    assert_eq!(args(&["kt", "gateway", "run"]), ["kt", "gateway", "run"]);
    assert_eq!(args(&["kt"]), ["kt"]);
}
