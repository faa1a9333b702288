//! The built-in rule table: for each secret format, the keywords that gate
//! it, the regex that finds it, and the checks that keep look-alikes out.
//!
//! Keywords are matched case-sensitively, in the spellings that occur:
//! token prefixes exactly as issued (`ghp_`, `AKIA`, `AIza`; their regexes
//! are case-sensitive anyway), words in lower, Capitalized and UPPER case
//! (`key`/`Key`/`KEY`), or by a tail that is the same in lower and
//! Capitalized case (`oken` for `token`/`Token`). Keep the distinct keywords
//! of all rules at or below [`MAX_KEYWORDS`] and at 3+ bytes: that is what
//! lets the automaton use its SIMD (Teddy) prefilter instead of stepping a
//! DFA byte by byte, which alone runs below the 1 GB/s target. Shorter
//! keywords (`Q~`) get a separate `memmem` pass.
//!
//! Patterns are compiled by `regex::bytes` in ASCII mode (`\b`, `\s`, `\w`
//! are ASCII), so they run on the lazy DFA in linear time whatever the input.
//! When a pattern has a group named `secret`, only that group is redacted;
//! a group named `ident` is handed to the check as the assigned identifier.
//! Right-hand boundaries are written as `(?:[^…]|$)` rather than `\b` when
//! the token alphabet has `-` or `=`; `$` is the end of the searched window,
//! which the scanner widens when a match reaches it.

use super::checks::{self, Candidate};
use std::ops::Range;

/// See [`checks`]: decides at a keyword hit whether, and where, to search.
pub(crate) type Gate = fn(&[u8], Range<usize>, Range<usize>) -> Option<Range<usize>>;
/// See [`checks`]: final say on a match.
pub(crate) type Check = fn(&Candidate<'_>) -> bool;

/// The most distinct 3+-byte keywords the SIMD prefilter takes.
pub(crate) const MAX_KEYWORDS: usize = 64;

/// Priorities for overlap resolution: a finding covering several matches is
/// named after the highest.
pub(crate) const JSON_KEY_FILE: u8 = 110;
pub(crate) const SPECIFIC: u8 = 100;
pub(crate) const PRIVATE_KEY: u8 = 90;
pub(crate) const JWT: u8 = 70;
pub(crate) const CUSTOM: u8 = 60;
pub(crate) const STRUCTURAL: u8 = 40;
pub(crate) const GENERIC: u8 = 10;

/// Words naming a secret (`api_key`, `authToken`, `CLIENT_SECRET`, …).
const SECRET_WORDS: &[&str] = &[
    "key",
    "Key",
    "KEY",
    "oken",
    "OKEN",
    "ecret",
    "ECRET",
    "uth",
    "UTH",
    "redential",
];
const PASSWORD_WORDS: &[&str] = &["pass", "Pass", "PASS", "pwd", "PWD"];
const QUERY_WORDS: &[&str] = &[
    "key",
    "Key",
    "KEY",
    "oken",
    "OKEN",
    "ecret",
    "ECRET",
    "uth",
    "UTH",
    "redential",
    "pass",
    "Pass",
    "PASS",
    "pwd",
    "PWD",
    "sig=",
];

#[derive(Clone, Copy)]
pub(crate) struct RuleDef {
    /// Stable rule id (kebab-case), reported with each finding.
    pub id: &'static str,
    /// The kind named in the placeholder; several rules may share one.
    pub kind: &'static str,
    /// Prefilter keywords, matched case-sensitively (see the module doc).
    pub keywords: &'static [&'static str],
    pub pattern: &'static str,
    /// How far before a keyword hit a match may start.
    pub before: usize,
    /// How far after the start of a keyword hit the default window reaches.
    pub after: usize,
    /// Longest match in practice (context included), for stream hold-back.
    pub max_len: usize,
    /// Minimum Shannon entropy (bits/byte) of the secret.
    pub entropy: Option<f64>,
    /// Require [`checks::left_boundary`] at the start of the secret.
    pub boundary: bool,
    pub gate: Option<Gate>,
    pub check: Option<Check>,
    pub priority: u8,
}

const BASE: RuleDef = RuleDef {
    id: "",
    kind: "",
    keywords: &[],
    pattern: "",
    before: 0,
    after: 0,
    max_len: 0,
    entropy: None,
    boundary: false,
    gate: None,
    check: None,
    priority: SPECIFIC,
};

/// A token that starts with one of its keywords (`ghp_…`): searched from
/// the hit, only when the hit is not glued to a preceding word.
const fn prefixed(
    id: &'static str,
    kind: &'static str,
    keywords: &'static [&'static str],
    pattern: &'static str,
    max_len: usize,
) -> RuleDef {
    RuleDef {
        id,
        kind,
        keywords,
        pattern,
        before: 0,
        after: max_len + 8,
        max_len,
        entropy: Some(3.0),
        boundary: true,
        gate: Some(checks::word_start as Gate),
        check: None,
        priority: SPECIFIC,
    }
}

/// `name = value` in code, config, `.env`, YAML, JSON, shell. Groups:
/// `ident`, then an optional type annotation (`password: str = …`), one of
/// the usual assignment or comparison operators, an optional quote, and the
/// value, which must end at a quote, a blank, a delimiter or the line end
/// (so `token = request.headers.get(…)` is not a value), or at the JSON
/// escape of a line end or tab: a `.env` file written through a tool call
/// reaches the scanner as JSON text (`A_PASSWORD=v\nB=…`), where a value
/// ends at the two characters `\n`. Repetitions are
/// unbounded on purpose: lengths are checked in Rust, and a small NFA keeps
/// capture extraction cheap on this, the most often run regex.
const ASSIGNMENT: &str = r#"(?P<ident>[A-Za-z_][A-Za-z0-9_.-]*)(?:\\?["'`]|\])*[ \t]*(?::[ \t]*[A-Za-z_&][A-Za-z0-9_.<>\[\]|&' ]*?[ \t]*)?(?:={1,3}|!==?|:=|=>|:|\|\|=|\?\?=)[ \t]*(?:\\?["'`])?(?P<secret>[A-Za-z0-9_+/=.~!@#$%^&*:?-]+)(?:\\?["'`]|\\[nrt]|[ \t,;)}\]\r\n]|$)"#;

/// AWS access key id prefixes.
const AWS_ID: &[&str] = &["AKIA", "ASIA", "ABIA", "ACCA", "A3T"];

pub(crate) static BUILTIN: &[RuleDef] = &[
    // ------------------------------------------------------------ cloud --
    RuleDef {
        check: Some(checks::aws_key_id),
        ..prefixed(
            "aws-access-key-id",
            "aws_access_key_id",
            AWS_ID,
            r"(?:A3T[A-Z0-9]|AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16,17}\b",
            21,
        )
    },
    RuleDef {
        id: "aws-secret-access-key",
        kind: "aws_secret_access_key",
        // The name always contains `secret`; the assignment gate narrows the
        // window to that one assignment.
        keywords: &["ecret", "ECRET"],
        pattern: r#"(?i:aws[A-Za-z0-9_.-]{0,32}?(?:secret|private)[A-Za-z0-9_.-]{0,32}|secret[_.-]?access[_.-]?key[A-Za-z0-9_.-]{0,16})(?:\\?["'`]|\])*[ \t]*(?:=|:=|:|=>)[ \t]*(?:\\?["'`])?(?P<secret>[A-Za-z0-9/+]{40})(?:[^A-Za-z0-9/+=]|$)"#,
        max_len: 200,
        entropy: Some(3.5),
        gate: Some(checks::assignment as Gate),
        check: Some(checks::mixed),
        ..BASE
    },
    RuleDef {
        id: "aws-secret-access-key-pair",
        kind: "aws_secret_access_key",
        keywords: AWS_ID,
        pattern: r#"(?:A3T[A-Z0-9]|AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16,17}(?:\\?["'])?[ \t,;:|]{1,6}(?:\\?["'])?(?P<secret>[A-Za-z0-9/+]{40})(?:[^A-Za-z0-9/+=]|$)"#,
        after: 80,
        max_len: 80,
        entropy: Some(3.5),
        check: Some(checks::mixed),
        ..BASE
    },
    RuleDef {
        check: Some(checks::digit_and_letter),
        ..prefixed(
            "google-api-key",
            "google_api_key",
            &["AIza"],
            r"(?P<secret>AIza[0-9A-Za-z_-]{35})(?:[^0-9A-Za-z_-]|$)",
            39,
        )
    },
    RuleDef {
        id: "json-private-key",
        kind: "gcp_service_account_key",
        // The `private_key` of a JSON key file, as downloaded for a GCP
        // service account; found from the PEM header inside it.
        keywords: &["BEGIN"],
        pattern: r#"\\?"private_key\\?"\s*:\s*\\?"(?P<secret>-----BEGIN[ A-Z]{0,40}PRIVATE KEY-----(?:[A-Za-z0-9+/=\s]|\\+[nr])+-----END[ A-Z]{0,40}PRIVATE KEY-----(?:\\+[nr])*)"#,
        before: 40,
        after: 8192,
        max_len: 8192,
        gate: Some(checks::pem_begin as Gate),
        check: Some(checks::pem_body),
        priority: JSON_KEY_FILE,
        ..BASE
    },
    RuleDef {
        id: "azure-ad-client-secret",
        kind: "azure_ad_client_secret",
        keywords: &["Q~"],
        pattern: r"(?P<secret>[A-Za-z0-9_~.]{3}[0-9]Q~[A-Za-z0-9_~.-]{31,34})(?:[^A-Za-z0-9_~.-]|$)",
        before: 8,
        after: 48,
        max_len: 40,
        entropy: Some(3.0),
        boundary: true,
        ..BASE
    },
    RuleDef {
        id: "azure-openai-key",
        kind: "azure_openai_key",
        // `<resource>.openai.azure.com`, `….cognitiveservices.azure.com`.
        keywords: &["azure.com"],
        pattern: r"\b(?P<secret>[a-fA-F0-9]{32})\b",
        before: 512,
        after: 512,
        max_len: 32,
        entropy: Some(3.0),
        check: Some(checks::digit_and_letter),
        ..BASE
    },
    RuleDef {
        id: "azure-api-key-header",
        kind: "azure_openai_key",
        keywords: &["key", "Key", "KEY"],
        pattern: r#"(?:^|[^A-Za-z0-9_-])(?i:api-key|ocp-apim-subscription-key)(?:\\?["'])?[ \t]*[:=][ \t]*(?:\\?["'])?(?P<secret>[a-fA-F0-9]{32})\b"#,
        before: 24,
        after: 120,
        max_len: 120,
        entropy: Some(3.0),
        gate: Some(checks::api_key_header as Gate),
        check: Some(checks::digit_and_letter),
        ..BASE
    },
    RuleDef {
        check: Some(checks::digit_and_letter),
        ..prefixed(
            "databricks-token",
            "databricks_token",
            &["dapi"],
            r"dapi[a-fA-F0-9]{32}(?:-[0-9]+)?\b",
            40,
        )
    },
    RuleDef {
        before: 3,
        gate: Some(checks::digitalocean as Gate),
        ..prefixed(
            "digitalocean-token",
            "digitalocean_token",
            &["_v1_"],
            r"do[opr]_v1_[a-f0-9]{64}\b",
            71,
        )
    },
    prefixed(
        "hashicorp-vault-token",
        "vault_token",
        &["hvs."],
        r"(?P<secret>hvs\.[A-Za-z0-9_-]{24,})(?:[^A-Za-z0-9_-]|$)",
        400,
    ),
    RuleDef {
        id: "hashicorp-vault-legacy-token",
        kind: "vault_token",
        keywords: &["oken", "OKEN"],
        pattern: r#"(?i:vault[A-Za-z0-9_.-]{0,24}token)(?:\\?["'`]|\])*[ \t]*(?:=|:=|:|=>)[ \t]*(?:\\?["'`])?(?P<secret>s\.[A-Za-z0-9]{24})\b"#,
        before: 40,
        after: 120,
        max_len: 120,
        entropy: Some(3.0),
        gate: Some(checks::vault_context as Gate),
        check: Some(checks::mixed),
        ..BASE
    },
    RuleDef {
        before: 16,
        gate: None,
        ..prefixed(
            "terraform-cloud-token",
            "terraform_cloud_token",
            &[".atlasv1."],
            r"(?P<secret>[A-Za-z0-9]{14}\.atlasv1\.[A-Za-z0-9_=-]{60,70})(?:[^A-Za-z0-9_=-]|$)",
            90,
        )
    },
    // ------------------------------------------------------ source code --
    prefixed(
        "github-pat",
        "github_pat",
        &["ghp_"],
        r"ghp_[A-Za-z0-9]{36,255}\b",
        259,
    ),
    prefixed(
        "github-oauth",
        "github_oauth_token",
        &["gho_"],
        r"gho_[A-Za-z0-9]{36,255}\b",
        259,
    ),
    prefixed(
        "github-app-token",
        "github_app_token",
        &["ghu_", "ghs_"],
        r"gh[us]_[A-Za-z0-9]{36,255}\b",
        259,
    ),
    prefixed(
        "github-refresh-token",
        "github_refresh_token",
        &["ghr_"],
        r"ghr_[A-Za-z0-9]{36,255}\b",
        259,
    ),
    prefixed(
        "github-fine-grained-pat",
        "github_fine_grained_pat",
        &["github_pat_"],
        r"github_pat_[A-Za-z0-9_]{80,255}\b",
        266,
    ),
    RuleDef {
        id: "github-copilot-token",
        kind: "github_copilot_token",
        keywords: &["tid="],
        pattern: r#"tid=[A-Za-z0-9]{8,64}(?:;[A-Za-z0-9_.-]{1,32}=[^;\s"'\\]*){2,}"#,
        after: 2048,
        max_len: 2048,
        boundary: true,
        check: Some(checks::copilot_token),
        ..BASE
    },
    prefixed(
        "gitlab-pat",
        "gitlab_pat",
        &["glpat-"],
        r"(?P<secret>glpat-[A-Za-z0-9_-]{20,300}(?:\.[A-Za-z0-9_-]{2,16}){0,2})(?:[^A-Za-z0-9_-]|$)",
        340,
    ),
    prefixed(
        "gitlab-token",
        "gitlab_token",
        &["gldt-", "glrt-"],
        r"(?P<secret>gl(?:dt|rt)-[A-Za-z0-9_-]{20,300}(?:\.[A-Za-z0-9_-]{2,16}){0,2})(?:[^A-Za-z0-9_-]|$)",
        340,
    ),
    prefixed(
        "sourcegraph-access-token",
        "sourcegraph_token",
        &["sgp_"],
        r"sgp_(?:(?:[a-fA-F0-9]{16}|local)_)?[a-fA-F0-9]{40}\b",
        61,
    ),
    prefixed(
        "sourcegraph-cody-gateway-key",
        "sourcegraph_cody_gateway_key",
        &["slk_", "sgd_"],
        r"(?:slk|sgd)_[a-fA-F0-9]{64}\b",
        68,
    ),
    RuleDef {
        check: Some(checks::mixed),
        ..prefixed(
            "atlassian-api-token",
            "atlassian_api_token",
            &["ATATT3"],
            r"(?P<secret>ATATT3[A-Za-z0-9_=-]{150,})(?:[^A-Za-z0-9_=-]|$)",
            300,
        )
    },
    // ------------------------------------------------------ AI providers --
    RuleDef {
        id: "openai-api-key",
        kind: "openai_api_key",
        // Base64 of "OpenAI", in the middle of every OpenAI key.
        keywords: &["T3BlbkFJ"],
        pattern: r"(?P<secret>sk-[A-Za-z0-9_-]{16,}T3BlbkFJ[A-Za-z0-9_-]{16,})(?:[^A-Za-z0-9_-]|$)",
        before: 320,
        after: 320,
        max_len: 400,
        entropy: Some(3.0),
        boundary: true,
        ..BASE
    },
    RuleDef {
        entropy: Some(3.5),
        gate: Some(checks::sk_openai as Gate),
        ..prefixed(
            "openai-project-key",
            "openai_api_key",
            &["sk-"],
            r"(?P<secret>sk-(?:proj|svcacct|admin)-[A-Za-z0-9_-]{40,})(?:[^A-Za-z0-9_-]|$)",
            400,
        )
    },
    RuleDef {
        gate: Some(checks::sk_anthropic as Gate),
        ..prefixed(
            "anthropic-api-key",
            "anthropic_api_key",
            &["sk-"],
            r"(?P<secret>sk-ant-(?:api|admin|oat|ort|sid)[0-9]{2}-[A-Za-z0-9_-]{32,})(?:[^A-Za-z0-9_-]|$)",
            300,
        )
    },
    RuleDef {
        gate: Some(checks::sk_openrouter as Gate),
        ..prefixed(
            "openrouter-api-key",
            "openrouter_api_key",
            &["sk-"],
            r"sk-or-v1-[a-f0-9]{64}\b",
            73,
        )
    },
    prefixed(
        "groq-api-key",
        "groq_api_key",
        &["gsk_"],
        r"gsk_[A-Za-z0-9]{52}\b",
        56,
    ),
    prefixed(
        "xai-api-key",
        "xai_api_key",
        &["xai-"],
        r"xai-[A-Za-z0-9]{80}\b",
        84,
    ),
    prefixed(
        "perplexity-api-key",
        "perplexity_api_key",
        &["pplx-"],
        r"pplx-[A-Za-z0-9]{48}\b",
        53,
    ),
    RuleDef {
        id: "deepseek-api-key",
        kind: "deepseek_api_key",
        // `sk-` + 32 hex is too plain on its own: the gate wants "deepseek"
        // within 256 bytes.
        keywords: &["sk-"],
        pattern: r"\b(?P<secret>sk-[a-f0-9]{32})\b",
        before: 1,
        after: 40,
        max_len: 35,
        entropy: Some(3.0),
        boundary: true,
        gate: Some(checks::deepseek_context as Gate),
        check: Some(checks::digit_and_letter),
        ..BASE
    },
    RuleDef {
        check: Some(checks::mixed),
        ..prefixed(
            "huggingface-token",
            "huggingface_token",
            &["hf_"],
            r"hf_[A-Za-z0-9]{34}\b",
            37,
        )
    },
    // ------------------------------------------------- SaaS & packaging --
    RuleDef {
        check: Some(checks::mixed),
        ..prefixed(
            "slack-token",
            "slack_token",
            &["xox", "xapp-"],
            r"(?P<secret>xox[abeoprs](?:\.xox[abeoprs])?-[0-9]{1,16}-[A-Za-z0-9-]{10,}|xapp-[0-9]-[A-Z0-9]{6,}-[0-9]{6,}-[A-Za-z0-9]{16,})(?:[^A-Za-z0-9_-]|$)",
            300,
        )
    },
    RuleDef {
        id: "slack-webhook-url",
        kind: "slack_webhook_url",
        keywords: &["s.slack.com"],
        pattern: r"hooks\.slack\.com/(?:services|workflows|triggers)/(?P<secret>[A-Za-z0-9+/_-]{20,})",
        before: 4,
        after: 200,
        max_len: 200,
        entropy: Some(3.0),
        ..BASE
    },
    RuleDef {
        check: Some(checks::mixed),
        ..prefixed(
            "stripe-key",
            "stripe_key",
            &["sk_", "rk_", "whsec_"],
            r"(?P<secret>(?:sk|rk)_(?:live|test|prod)_[A-Za-z0-9]{20,247}|whsec_[A-Za-z0-9+/=]{32,})(?:[^A-Za-z0-9_]|$)",
            256,
        )
    },
    RuleDef {
        entropy: Some(3.0),
        ..prefixed(
            "sendgrid-api-key",
            "sendgrid_api_key",
            &["SG."],
            r"(?P<secret>SG\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43})(?:[^A-Za-z0-9_-]|$)",
            69,
        )
    },
    RuleDef {
        id: "twilio-api-key",
        kind: "twilio_api_key",
        // `SK` alone is in every other upper-case word: look near "twilio".
        keywords: &["wilio", "WILIO"],
        pattern: r"\b(?P<secret>SK[0-9a-fA-F]{32})\b",
        before: 256,
        after: 256,
        max_len: 34,
        entropy: Some(3.0),
        boundary: true,
        check: Some(checks::digit_and_letter),
        ..BASE
    },
    prefixed(
        "shopify-token",
        "shopify_token",
        &["shp"],
        r"shp(?:at|ca|ss|pa)_[a-fA-F0-9]{32}\b",
        38,
    ),
    RuleDef {
        check: Some(checks::digit_and_letter),
        ..prefixed(
            "npm-token",
            "npm_token",
            &["npm_"],
            r"npm_[A-Za-z0-9]{36}\b",
            40,
        )
    },
    prefixed(
        "pypi-token",
        "pypi_token",
        &["pypi-AgE"],
        r"(?P<secret>pypi-AgE(?:IcHlwaS5vcmc|NdGVzdC5weXBpLm9yZw)[A-Za-z0-9_-]{50,})(?:[^A-Za-z0-9_-]|$)",
        1100,
    ),
    RuleDef {
        before: 5,
        gate: Some(checks::age_key as Gate),
        ..prefixed(
            "age-secret-key",
            "age_secret_key",
            &["ECRET"],
            r"AGE-SECRET-KEY-1[QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L]{58}\b",
            74,
        )
    },
    // ---------------------------------------------------- format-based --
    RuleDef {
        id: "private-key",
        kind: "private_key",
        keywords: &["BEGIN"],
        // The body stops at the first `--` (the END line), or, for a key
        // pasted without its END line, at the first character no PEM, PGP
        // armor or JSON-escaped PEM contains.
        pattern: r"-----BEGIN[ A-Z0-9_-]{0,100}PRIVATE KEY(?: BLOCK)?-----(?:[A-Za-z0-9+/=\s\\:,.()]|-[A-Za-z0-9 ])*(?:-----END[ A-Z0-9_-]{0,100}PRIVATE KEY(?: BLOCK)?-----)?",
        before: 5,
        after: 8192,
        max_len: 8192,
        gate: Some(checks::pem_begin as Gate),
        check: Some(checks::pem_body),
        priority: PRIVATE_KEY,
        ..BASE
    },
    RuleDef {
        after: 4096,
        priority: JWT,
        ..prefixed(
            "jwt",
            "jwt",
            &["eyJ"],
            r"(?P<secret>ey[A-Za-z0-9_-]{12,}\.ey[A-Za-z0-9_-]{12,}\.[A-Za-z0-9_-]{8,}(?:\.[A-Za-z0-9_-]+){0,2})(?:[^A-Za-z0-9_-]|$)",
            4096,
        )
    },
    RuleDef {
        id: "url-credentials",
        kind: "url_credentials",
        keywords: &["://"],
        pattern: r#"[A-Za-z][A-Za-z0-9+.-]{0,31}://[^\s:/?#@"'<>\\]{0,128}:(?P<secret>[^\s/?#@"'<>\\]{1,256})@[A-Za-z0-9\[\]_.-]"#,
        after: 440,
        max_len: 440,
        gate: Some(checks::url_userinfo),
        check: Some(checks::url_password),
        priority: STRUCTURAL,
        ..BASE
    },
    RuleDef {
        id: "url-query-secret",
        kind: "url_credentials",
        keywords: QUERY_WORDS,
        pattern: r#"[?&](?P<ident>[A-Za-z0-9_.-]{1,48})=(?P<secret>[^&\s#"'<>\\]{8,512})"#,
        after: 600,
        max_len: 600,
        entropy: Some(3.0),
        gate: Some(checks::query_param),
        check: Some(checks::query_secret),
        priority: STRUCTURAL,
        ..BASE
    },
    RuleDef {
        id: "http-auth-token",
        kind: "http_auth_token",
        // `uth` of Authorization/AUTHORIZATION, `earer` of Bearer/bearer.
        keywords: &["uth", "UTH", "earer"],
        pattern: r#"(?i:authorization(?:\\?["'])?[ \t]*[:=][ \t]*(?:\\?["'])?(?:bearer|basic|token|digest)?[ \t]*|bearer[ \t]+)(?P<secret>[A-Za-z0-9._~+/-]{16,}=*)(?:[^A-Za-z0-9._~+/=-]|$)"#,
        before: 1,
        after: 600,
        max_len: 600,
        entropy: Some(3.0),
        gate: Some(checks::auth_scheme),
        check: Some(checks::auth_token),
        priority: STRUCTURAL,
        ..BASE
    },
    RuleDef {
        id: "generic-secret",
        kind: "generic_secret",
        keywords: SECRET_WORDS,
        pattern: ASSIGNMENT,
        max_len: 400,
        entropy: Some(3.0),
        gate: Some(checks::assignment_secret),
        check: Some(checks::generic_secret),
        priority: GENERIC,
        ..BASE
    },
    RuleDef {
        id: "generic-password",
        kind: "password",
        keywords: PASSWORD_WORDS,
        pattern: ASSIGNMENT,
        max_len: 400,
        gate: Some(checks::assignment_password),
        check: Some(checks::password),
        priority: GENERIC,
        ..BASE
    },
];
