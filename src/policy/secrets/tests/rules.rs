//! One or more true positives and look-alike negatives per built-in rule.

use super::*;

const TS: &str =
    "import { Client } from \"./client\";\nconst KEY = \"{S}\";\nconst client = new Client(KEY);\n";
const ENV: &str = "# deploy settings\nAPP_ENV=production\nTOKEN={S}\nLOG_LEVEL=info\n";
const YAML: &str = "service:\n  name: billing\n  credentials: {S}\n  retries: 3\n";
const PROSE: &str = "Can you tell me why the request fails? I'm using {S} as the key.";
const PY: &str = "client = Client(\n    token=\"{S}\",\n    timeout=30,\n)\n";

fn positives() -> Vec<(&'static str, String, &'static str)> {
    let mut g = Gen::new(42);
    let mut v = vec![
        ("aws_access_key_id", format!("AKIA{}", g.s(BASE32, 16)), "[default]\naws_access_key_id = {S}\nregion = eu-west-1\n"),
        ("aws_access_key_id", format!("ASIA{}", g.s(BASE32, 16)), PROSE),
        ("aws_secret_access_key", g.s(B64, 40), "[default]\naws_secret_access_key = {S}\n"),
        ("aws_secret_access_key", g.s(B64, 40), "{\"AccessKeyId\": \"x\", \"SecretAccessKey\": \"{S}\"}"),
        ("github_pat", format!("ghp_{}", g.s(ALNUM, 36)), TS),
        ("github_oauth_token", format!("gho_{}", g.s(ALNUM, 36)), "curl -H 'Authorization: token {S}' https://api.github.com/user"),
        ("github_app_token", format!("ghs_{}", g.s(ALNUM, 36)), YAML),
        ("github_app_token", format!("ghu_{}", g.s(ALNUM, 36)), PROSE),
        ("github_refresh_token", format!("ghr_{}", g.s(ALNUM, 76)), PROSE),
        ("github_fine_grained_pat", format!("github_pat_{}_{}", g.s(ALNUM, 22), g.s(ALNUM, 59)), ENV),
        (
            "github_copilot_token",
            format!(
                "tid={};exp=1731000000;sku=copilot_for_business_seat;proxy-ep=proxy.business.githubcopilot.com;st=dotcom;chat=1;8kp=1:{}",
                g.s(HEX, 32),
                g.s(HEX, 64)
            ),
            "GET /models HTTP/1.1\nAuthorization: Bearer {S}\nEditor-Version: vscode/1.95.0\n",
        ),
        ("gitlab_pat", format!("glpat-{}", g.s(URLSAFE, 20)), TS),
        ("gitlab_pat", format!("glpat-{}.01.{}", g.s(URLSAFE, 27), g.s(LOWER_ALNUM, 9)), PROSE),
        ("gitlab_token", format!("glrt-{}", g.s(URLSAFE, 20)), "gitlab-runner register --token {S} --url https://gitlab.example.invalid"),
        ("openai_api_key", format!("sk-proj-{}T3BlbkFJ{}", g.s(URLSAFE, 74), g.s(URLSAFE, 74)), ENV),
        ("openai_api_key", format!("sk-{}T3BlbkFJ{}", g.s(ALNUM, 20), g.s(ALNUM, 20)), TS),
        ("openai_api_key", format!("sk-svcacct-{}", g.s(URLSAFE, 120)), PY),
        ("anthropic_api_key", format!("sk-ant-api03-{}AA", g.s(URLSAFE, 93)), YAML),
        ("anthropic_api_key", format!("sk-ant-admin01-{}AA", g.s(URLSAFE, 93)), "x-api-key: {S}\n"),
        ("google_api_key", format!("AIza{}", g.s(URLSAFE, 35)), TS),
        (
            "google_api_key",
            format!("AIza{}", g.s(URLSAFE, 35)),
            "POST https://generativelanguage.googleapis.com/v1beta/models/gemini-pro:generateContent?key={S}&alt=sse",
        ),
        ("private_key", format!("-----BEGIN RSA PRIVATE KEY-----\n{}\n-----END RSA PRIVATE KEY-----", g.pem_body(1600, "\n")), "Why is this key rejected?\n{S}\nthanks"),
        ("private_key", format!("-----BEGIN OPENSSH PRIVATE KEY-----\r\n{}\r\n-----END OPENSSH PRIVATE KEY-----", g.pem_body(400, "\r\n")), "id_ed25519:\r\n{S}\r\n"),
        (
            "private_key",
            format!(
                "-----BEGIN PGP PRIVATE KEY BLOCK-----\nVersion: GnuPG v2\n\n{}\n={}\n-----END PGP PRIVATE KEY BLOCK-----",
                g.pem_body(2000, "\n"),
                g.s(B64, 4)
            ),
            "{S}",
        ),
        (
            "private_key",
            format!(
                "-----BEGIN EC PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,{}\n\n{}\n-----END EC PRIVATE KEY-----",
                g.s(b"0123456789ABCDEF", 32),
                g.pem_body(160, "\n")
            ),
            "  key: |\n{S}\n",
        ),
        ("jwt", format!("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJ{}.{}", g.s(URLSAFE, 60), g.s(URLSAFE, 43)), "Cookie: session={S}; Path=/; HttpOnly"),
        ("jwt", format!("eyJhbGciOiJSUzI1NiJ9.eyJ{}.{}", g.s(URLSAFE, 120), g.s(URLSAFE, 342)), "the token is {S}."),
        ("slack_token", format!("xoxb-{}-{}-{}", g.s(DIGITS, 12), g.s(DIGITS, 13), g.s(ALNUM, 24)), YAML),
        ("slack_token", format!("xoxp-{}-{}-{}-{}", g.s(DIGITS, 12), g.s(DIGITS, 12), g.s(DIGITS, 13), g.s(HEX, 32)), PROSE),
        ("slack_token", format!("xapp-1-A{}-{}-{}", g.s(BASE32, 10), g.s(DIGITS, 13), g.s(HEX, 64)), ENV),
        ("slack_webhook_url", format!("T{}/B{}/{}", g.s(BASE32, 8), g.s(BASE32, 10), g.s(ALNUM, 24)), "WEBHOOK = \"https://hooks.slack.com/services/{S}\"\n"),
        ("stripe_key", format!("sk_live_{}", g.s(ALNUM, 24)), TS),
        ("stripe_key", format!("rk_test_{}", g.s(ALNUM, 99)), PROSE),
        ("stripe_key", format!("whsec_{}", g.s(ALNUM, 32)), ENV),
        ("npm_token", format!("npm_{}", g.s(ALNUM, 36)), "//registry.npmjs.org/:_authToken={S}\n"),
        ("npm_token", format!("npm_{}", g.s(LOWER_ALNUM, 36)), PROSE),
        ("pypi_token", format!("pypi-AgEIcHlwaS5vcmc{}", g.s(URLSAFE, 140)), "[pypi]\n  username = __token__\n  password = {S}\n"),
        ("huggingface_token", format!("hf_{}", g.s(ALNUM, 34)), PY),
        ("azure_ad_client_secret", format!("{}{}Q~{}", g.s(ALNUM, 3), g.s(DIGITS, 1), g.s(ALNUM, 34)), "AZURE_CLIENT_SECRET={S}\n"),
        ("azure_openai_key", g.s(HEX, 32), "endpoint: https://contoso-ai.openai.azure.com/\napi_key: {S}\n"),
        ("azure_openai_key", g.s(HEX, 32), "curl $URL -H \"api-key: {S}\" -d @body.json"),
        ("sourcegraph_token", format!("sgp_{}_{}", g.s(HEX, 16), g.s(HEX, 40)), "SRC_ACCESS_TOKEN={S}\n"),
        ("sourcegraph_token", format!("sgp_{}", g.s(HEX, 40)), PROSE),
        ("sourcegraph_cody_gateway_key", format!("slk_{}", g.s(HEX, 64)), PROSE),
        ("sourcegraph_cody_gateway_key", format!("sgd_{}", g.s(HEX, 64)), TS),
        ("sendgrid_api_key", format!("SG.{}.{}", g.s(URLSAFE, 22), g.s(URLSAFE, 43)), TS),
        ("twilio_api_key", format!("SK{}", g.s(HEX, 32)), "TWILIO_API_KEY={S}\n"),
        ("databricks_token", format!("dapi{}", g.s(HEX, 32)), "databricks:\n  host: https://adb-1.azuredatabricks.net\n  token: {S}\n"),
        ("digitalocean_token", format!("dop_v1_{}", g.s(HEX, 64)), PROSE),
        ("shopify_token", format!("shpat_{}", g.s(HEX, 32)), TS),
        ("vault_token", format!("hvs.{}", g.s(URLSAFE, 95)), "VAULT_TOKEN={S}\n"),
        ("vault_token", format!("s.{}", g.s(ALNUM, 24)), "vault_token: {S}\n"),
        ("terraform_cloud_token", format!("{}.atlasv1.{}", g.s(ALNUM, 14), g.s(URLSAFE, 67)), "credentials \"app.terraform.io\" {\n  token = \"{S}\"\n}\n"),
        ("groq_api_key", format!("gsk_{}", g.s(ALNUM, 52)), ENV),
        ("xai_api_key", format!("xai-{}", g.s(ALNUM, 80)), PY),
        ("perplexity_api_key", format!("pplx-{}", g.s(ALNUM, 48)), TS),
        ("openrouter_api_key", format!("sk-or-v1-{}", g.s(HEX, 64)), PROSE),
        ("deepseek_api_key", format!("sk-{}", g.s(HEX, 32)), "DEEPSEEK_API_KEY={S}\n"),
        ("deepseek_api_key", format!("sk-{}", g.s(HEX, 32)), "client = OpenAI(api_key=\"{S}\", base_url=\"https://api.deepseek.com\")"),
        ("atlassian_api_token", format!("ATATT3{}={}", g.s(URLSAFE, 176), g.s(b"0123456789ABCDEF", 8)), "JIRA_API_TOKEN={S}\n"),
        ("age_secret_key", format!("AGE-SECRET-KEY-1{}", g.s(BECH32, 58)), "# created: 2024-05-01\n{S}\n"),
        ("generic_secret", g.s(ALNUM, 32), "client_secret = \"{S}\"\n"),
        ("generic_secret", g.s(URLSAFE, 40), "  \"apiKey\": \"{S}\",\n"),
        ("generic_secret", g.s(ALNUM, 24), "export INTERNAL_AUTH_TOKEN={S}\n"),
        ("generic_secret", g.s(LOWER_ALNUM, 20), "let secretKey: string = '{S}';"),
        ("password", "Tr0ub4dor&3".into(), "DB_PASSWORD={S}\n"),
        ("password", "correcthorse".into(), "  \"password\": \"{S}\",\n"),
        ("password", "s3cret!42".into(), "conn = connect(host=\"db\", user=\"app\", passwd='{S}')"),
        ("password", "p4ss-w0rd".into(), "Server=db;User Id=sa;Password={S};Encrypt=true"),
        ("url_credentials", g.s(ALNUM, 16), "DATABASE_URL=postgres://app:{S}@db.internal.example:5432/app\n"),
        ("url_credentials", g.s(ALNUM, 20), "REDIS_URL=redis://:{S}@cache:6379/0"),
        ("url_credentials", g.s(ALNUM, 32), "GET https://api.example.invalid/export?format=csv&access_token={S} HTTP/1.1"),
        ("http_auth_token", g.s(URLSAFE, 40), "curl -H \"Authorization: Bearer {S}\" https://api.example.invalid"),
        ("http_auth_token", g.s(B64, 28), "Authorization: Basic {S}\n"),
    ];
    // The GCP service-account JSON, as pasted from the downloaded file.
    let sa_key = format!(
        "-----BEGIN PRIVATE KEY-----\\n{}\\n-----END PRIVATE KEY-----\\n",
        g.pem_body(1600, "\\n")
    );
    let sa_template = format!(
        "{{\n  \"type\": \"service_account\",\n  \"project_id\": \"demo-project\",\n  \"private_key_id\": \"{}\",\n  \"private_key\": \"{{S}}\",\n  \"client_email\": \"bot@demo-project.iam.gserviceaccount.com\",\n  \"auth_provider_x509_cert_url\": \"https://www.googleapis.com/oauth2/v1/certs\"\n}}",
        g.s(HEX, 40)
    );
    v.push(("gcp_service_account_key", sa_key, sa_template.leak()));
    v
}

#[test]
fn every_rule_has_a_true_positive() {
    let cases = positives();
    let mut failures = Vec::new();
    for (kind, secret, template) in &cases {
        if let Err(e) = expect_redacted(kind, secret, template) {
            failures.push(e);
        }
    }
    // Each built-in kind is exercised at least once.
    for (_, kind) in scanner().rules() {
        if !cases.iter().any(|(k, _, _)| k == &kind) {
            failures.push(format!("no positive case for kind {kind}"));
        }
    }
    report(failures);
}

#[test]
fn aws_key_pair_on_one_line() {
    let mut g = Gen::new(43);
    let id = format!("AKIA{}", g.s(BASE32, 16));
    let secret = g.s(B64, 40);
    let text = format!("User name,Access key ID,Secret access key\nci-bot,{id},{secret}\n");
    let r = scanner().redact(&text);
    assert_eq!(
        r.text,
        "User name,Access key ID,Secret access key\nci-bot,[REDACTED:aws_access_key_id],[REDACTED:aws_secret_access_key]\n"
    );
}

fn negatives() -> Vec<String> {
    let mut g = Gen::new(44);
    let mut v: Vec<String> = [
        // AWS
        "The AKIA prefix marks AWS access key ids; never paste one here.",
        "const REGION = ASIAPACIFICSOUTHEAST;",
        "id = AKIAXXXXXXXXXXXXXXXX",
        "aws_secret_access_key = ${AWS_SECRET_ACCESS_KEY}",
        "aws_secret_access_key = abcdefghijklmnopqrstuvwxyzabcdefghijklmn",
        // GitHub, GitLab
        "fn task_ghp_handler() {}",
        "ghp_ is the prefix GitHub uses for classic tokens",
        "GH_TOKEN=ghp_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
        "github_pat_ tokens are fine-grained",
        "glpat-xxxxxxxxxxxxxxxxxxxx",
        "see the glpat- prefix docs",
        "tid=42;sku=free;proxy-ep=proxy.individual.githubcopilot.com",
        // AI providers
        "OPENAI_API_KEY=sk-xxxx",
        "const key = \"sk-proj-...\";",
        "The base64 of \"OpenAI\" is T3BlbkFJ, which is why keys contain it.",
        "sk-ant-api03-REPLACE_ME",
        "AIzaSy... (your Gemini key)",
        "key=AIzaXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX",
        "pplx-api and xai-sdk are python packages; gsk_ is Groq's prefix",
        "model = \"deepseek-coder\"  # uses sk- keys",
        // formats
        "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUY2VydGlmaWNhdGUgYm9keSBub3QgYSBrZXkgYXQgYWxs\n-----END CERTIFICATE-----",
        "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEcHVibGljIGtleSBib2R5IG5vdCBzZWNyZXQ\n-----END PUBLIC KEY-----",
        "Files start with -----BEGIN RSA PRIVATE KEY----- and end with the END line.",
        "-----BEGIN PRIVATE KEY-----\n...\n-----END PRIVATE KEY-----",
        "headers start with eyJ when base64-encoded JSON; e.g. eyJhbGciOiJIUzI1NiJ9 alone",
        "xoxb tokens are for Slack bots; see the docs",
        "SLACK_BOT_TOKEN=xoxb-your-token-here",
        "https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX",
        "fn sk_live_reload(cfg: &Config) -> Result<()> { todo!() }",
        "sk_test_validatesinputcorrectly",
        "STRIPE_KEY=sk_live_xxxxxxxxxxxxxxxxxxxxxxxx",
        "npm_config_cache=/tmp/npm npm_package_json_version_number=2",
        "hf_hub_download(repo_id=\"org/model\", filename=\"config.json\")",
        "hf_abcdefghijklmnopqrstuvwxyzabcdefgh",
        "a Q~ b and abc1Q~short",
        "msg.content = msg.role; self.msg.SG.x",
        "TASK0123456789abcdef0123456789abcdef SKIP the rest",
        "SKXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX",
        "dapi is a prefix; dapi1234abcd",
        "dop_v1_ tokens; shpat_ tokens; hvs. tokens; s.length",
        "ATATT3 is Atlassian's prefix",
        "AGE-SECRET-KEY-1 followed by bech32",
        // generic, password, URL, header
        "password = os.environ['DB_PASSWORD']",
        "const API_KEY = process.env.OPENAI_API_KEY;",
        "let token = request.headers.get(\"authorization\");",
        "api_key = \"your-api-key-here\"",
        "API_KEY=<your key>",
        "secret_name = \"my-app-secret-2024\"",
        "STORAGE_KEY = \"app-settings-v2\"",
        "key_id = \"4f3c2a1b-0e9d-4c8b-a7f6-5e4d3c2b1a09\"",
        "token_count = 123456789012",
        "primary_key = \"user_id_1234567\"",
        "max_tokens: 4096",
        "password = \"changeme\"",
        "password: String,",
        "password = get_password()",
        "PASSWORD_MIN_LENGTH = 8",
        "passwordHint: \"first pet name1\"",
        "password = \"\"",
        "password: ${DB_PASSWORD}",
        "pwd = \"/home/dev/project\"",
        "if password == password_confirmation:",
        "https://user@example.com/path",
        "postgres://user:${DB_PASS}@localhost:5432/db",
        "postgres://postgres:postgres@localhost:5432/db",
        "http://localhost:8080/api https://docs.rs:443/regex",
        "https://example.invalid/items?page_token=abc123def456ghi789&sort=key",
        "Authorization: Bearer $OPENAI_API_KEY",
        "Authorization: Bearer <token>",
        "Bearer YOUR_API_KEY_GOES_HERE_123",
        "The basic usage of the parser is documented here, basically.",
        "commit dfa604ff8d3de921d4b62eb3a36a55a2692feecb fixed the build",
        "sha256: ec79c80943d99d1435fd31ba919e1b968859a2144caaf590800de0c330c2f6b1",
        "uuid = 'f5405954-647e-42fc-cddf-8f46c184e64c'",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // Right prefix, wrong length or alphabet.
    v.push(format!("ghp_{}", g.s(ALNUM, 20)));
    v.push(format!("AIza{}", g.s(ALNUM, 20)));
    v.push(format!("npm_{}", g.s(LOWER_ALNUM, 20)));
    v.push(format!("dop_v1_{}", g.s(ALNUM, 64)));
    v.push(format!("shpat_{}", g.s(ALNUM, 32)));
    v.push(format!("sgp_{}", g.s(HEX, 20)));
    v.push(format!("SG.{}", g.s(URLSAFE, 30)));
    v.push(format!("AGE-SECRET-KEY-1{}", g.s(LOWER_ALNUM, 58)));
    v.push(format!("xai-{}", g.s(ALNUM, 40)));
    v.push(format!("sk-{} (no provider named nearby)", g.s(HEX, 32)));
    v.push(format!("checksum {} is fine", g.s(HEX, 32)));
    // A random string glued to an identifier.
    v.push(format!("my_ghp_{}", g.s(ALNUM, 36)));
    v.push(format!("xAIza{}", g.s(URLSAFE, 35)));
    v
}

#[test]
fn look_alikes_are_kept() {
    report(
        negatives()
            .iter()
            .filter_map(|t| expect_kept(t).err())
            .collect(),
    );
}
