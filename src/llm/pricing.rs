//! What a model's tokens cost: a built-in table of list prices (USD per
//! million tokens) that a config's `pricing:` section extends or overrides,
//! and the arithmetic that turns an exchange's usage into `cost_usd`.
//!
//! Models are matched by name, case-insensitively, ignoring a vendor prefix
//! (`openai/gpt-4o`, Sourcegraph's `anthropic::2024-10-22::claude-…`) and treating `.` like `-` (Copilot says
//! `claude-3.5-sonnet`, Anthropic `claude-3-5-sonnet-20241022`). The longest
//! table entry that is the whole name or a prefix of it ending at a `-`
//! wins, so dated snapshots (`gpt-4o-2024-08-06`) find their family while
//! `gpt-4o-mini` keeps its own price. A word that names a separately priced
//! variant (`-pro`, `-mini`, `-preview`, `-32k`, …) is never dropped to
//! reach a shorter entry: `o3-pro` costs ten times `o3`, so a variant the
//! table does not know goes unpriced rather than priced as its base. An
//! unknown model has no cost (absent, never zero).

use super::inspect::Usage;
use rustc_hash::FxHashMap;
use std::borrow::Cow;

/// Prices of one model, USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Price {
    pub input: f64,
    pub output: f64,
    /// Prompt tokens served from the provider's prompt cache; the input
    /// price when the provider has no discount.
    pub cached_input: Option<f64>,
    /// Prompt tokens written to the provider's prompt cache (Anthropic); the
    /// input price when absent.
    pub cache_write: Option<f64>,
}

impl Price {
    const fn new(input: f64, output: f64, cached_input: f64) -> Price {
        Price {
            input,
            output,
            cached_input: Some(cached_input),
            cache_write: None,
        }
    }

    /// A model whose cached input gets no discount (or cannot be cached).
    const fn uncached(input: f64, output: f64) -> Price {
        Price {
            input,
            output,
            cached_input: None,
            cache_write: None,
        }
    }

    const fn anthropic(input: f64, output: f64) -> Price {
        // Anthropic bills cache reads at a tenth and writes at 1.25x.
        Price {
            input,
            output,
            cached_input: Some(input / 10.0),
            cache_write: Some(input * 1.25),
        }
    }

    /// Cost of `usage`, or `None` when neither side's token count is known.
    /// `tokens_in` includes cached and cache-write tokens (see [`Usage`]).
    pub fn cost(&self, usage: &Usage) -> Option<f64> {
        if usage.tokens_in.is_none() && usage.tokens_out.is_none() {
            return None;
        }
        let cached = usage.cached_in.unwrap_or(0);
        let written = usage.cache_write.unwrap_or(0);
        let plain = usage
            .tokens_in
            .unwrap_or(0)
            .saturating_sub(cached)
            .saturating_sub(written);
        let per_token = |n: u64, price: f64| n as f64 * price / 1_000_000.0;
        let total = per_token(plain, self.input)
            + per_token(cached, self.cached_input.unwrap_or(self.input))
            + per_token(written, self.cache_write.unwrap_or(self.input))
            + per_token(usage.tokens_out.unwrap_or(0), self.output);
        // Micro-dollar precision keeps logs readable and sums stable.
        Some((total * 1e6).round() / 1e6)
    }
}

/// List prices (USD per 1M tokens) at the providers' public APIs. For
/// seat-billed assistants (Copilot, Cody) the cost is what the same traffic
/// would cost at the API: a fair measure of use, not an invoice.
const BUILT_IN: &[(&str, Price)] = &[
    // OpenAI
    ("gpt-5", Price::new(1.25, 10.0, 0.125)),
    ("gpt-5-mini", Price::new(0.25, 2.0, 0.025)),
    ("gpt-5-nano", Price::new(0.05, 0.40, 0.005)),
    ("gpt-5-pro", Price::uncached(15.0, 120.0)),
    ("gpt-4-1", Price::new(2.0, 8.0, 0.50)),
    ("gpt-4-1-mini", Price::new(0.40, 1.60, 0.10)),
    ("gpt-4-1-nano", Price::new(0.10, 0.40, 0.025)),
    ("gpt-4o", Price::new(2.50, 10.0, 1.25)),
    // The first gpt-4o snapshot kept its launch price.
    ("gpt-4o-2024-05-13", Price::uncached(5.0, 15.0)),
    ("gpt-4o-mini", Price::new(0.15, 0.60, 0.075)),
    ("gpt-4-turbo", Price::new(10.0, 30.0, 10.0)),
    // GPT-4 Turbo's previews, priced as it.
    ("gpt-4-turbo-preview", Price::uncached(10.0, 30.0)),
    ("gpt-4-1106-preview", Price::uncached(10.0, 30.0)),
    ("gpt-4-0125-preview", Price::uncached(10.0, 30.0)),
    ("gpt-4", Price::new(30.0, 60.0, 30.0)),
    ("gpt-4-32k", Price::uncached(60.0, 120.0)),
    ("gpt-3-5-turbo", Price::new(0.50, 1.50, 0.50)),
    ("o1", Price::new(15.0, 60.0, 7.50)),
    ("o1-mini", Price::new(1.10, 4.40, 0.55)),
    ("o1-pro", Price::uncached(150.0, 600.0)),
    ("o3", Price::new(2.0, 8.0, 0.50)),
    ("o3-mini", Price::new(1.10, 4.40, 0.55)),
    ("o3-pro", Price::uncached(20.0, 80.0)),
    ("o4-mini", Price::new(1.10, 4.40, 0.275)),
    ("text-embedding-3-small", Price::new(0.02, 0.0, 0.02)),
    ("text-embedding-3-large", Price::new(0.13, 0.0, 0.13)),
    ("text-embedding-ada-002", Price::new(0.10, 0.0, 0.10)),
    // Anthropic
    ("claude-opus-4-5", Price::anthropic(5.0, 25.0)),
    ("claude-opus-4", Price::anthropic(15.0, 75.0)),
    ("claude-sonnet-4", Price::anthropic(3.0, 15.0)),
    ("claude-haiku-4-5", Price::anthropic(1.0, 5.0)),
    ("claude-3-7-sonnet", Price::anthropic(3.0, 15.0)),
    ("claude-3-5-sonnet", Price::anthropic(3.0, 15.0)),
    ("claude-3-5-haiku", Price::anthropic(0.80, 4.0)),
    ("claude-3-opus", Price::anthropic(15.0, 75.0)),
    ("claude-3-haiku", Price::anthropic(0.25, 1.25)),
    // Google
    ("gemini-2-5-pro", Price::new(1.25, 10.0, 0.31)),
    // Its previews (`gemini-2.5-pro-preview-06-05`) were priced as it.
    ("gemini-2-5-pro-preview", Price::new(1.25, 10.0, 0.31)),
    ("gemini-2-5-flash", Price::new(0.30, 2.50, 0.075)),
    ("gemini-2-5-flash-lite", Price::new(0.10, 0.40, 0.025)),
    ("gemini-2-0-flash", Price::new(0.10, 0.40, 0.025)),
    ("gemini-1-5-pro", Price::new(1.25, 5.0, 0.3125)),
    ("gemini-1-5-flash", Price::new(0.075, 0.30, 0.01875)),
    // Mistral
    ("codestral", Price::new(0.30, 0.90, 0.30)),
    ("mistral-large", Price::new(2.0, 6.0, 2.0)),
    ("mistral-medium", Price::new(0.40, 2.0, 0.40)),
    ("mistral-small", Price::new(0.10, 0.30, 0.10)),
];

/// The price table in force: built-in entries plus the config's.
#[derive(Debug, Clone)]
pub struct Pricing {
    /// Normalised model name → price.
    prices: FxHashMap<String, Price>,
}

impl Default for Pricing {
    fn default() -> Self {
        Pricing::with_overrides(std::iter::empty())
    }
}

impl Pricing {
    /// The built-in table with `overrides` (model name, price) laid over it.
    pub fn with_overrides<'a>(overrides: impl IntoIterator<Item = (&'a str, Price)>) -> Self {
        let mut prices: FxHashMap<String, Price> = BUILT_IN
            .iter()
            .map(|(m, p)| (normalise(m).into_owned(), *p))
            .collect();
        for (model, price) in overrides {
            prices.insert(normalise(model).into_owned(), price);
        }
        Pricing { prices }
    }

    /// The price of `model`, if the table knows it.
    pub fn price(&self, model: &str) -> Option<&Price> {
        let name = normalise(model);
        let mut end = name.len();
        loop {
            let candidate = name.get(..end)?;
            if let Some(p) = self.prices.get(candidate) {
                return Some(p);
            }
            // Shorten to the previous `-`: whole words only.
            end = candidate.rfind('-')?;
            if is_variant(&candidate[end + 1..]) {
                return None;
            }
        }
    }

    /// `cost_usd` of an exchange, when both the model's price and some
    /// token count are known.
    pub fn cost(&self, model: Option<&str>, usage: &Usage) -> Option<f64> {
        self.price(model?)?.cost(usage)
    }
}

/// Words that name a model priced apart from the one its name starts
/// with (`o3-pro`, `gemini-2.5-flash-lite`, `gpt-4-32k`, `gpt-4o-mini`,
/// `gpt-4-1106-preview`, `gpt-4o-realtime-preview`, `o3-deep-research`):
/// the fallback stops at them, since the base's price would be wrong by
/// up to tenfold either way. Dates, versions and `latest` do drop.
fn is_variant(word: &str) -> bool {
    const VARIANTS: &[&str] = &[
        "pro", "lite", "mini", "nano", "preview", "turbo", "realtime", "audio", "research",
    ];
    // Context sizes: `-32k`, `-16k`.
    let context = word.len() > 1
        && word.ends_with('k')
        && word[..word.len() - 1].bytes().all(|b| b.is_ascii_digit());
    context || VARIANTS.contains(&word)
}

fn normalise(model: &str) -> Cow<'_, str> {
    let base = model.rsplit('/').next().unwrap_or(model);
    // Cody names models `provider::api-version::model`.
    let base = base.rsplit("::").next().unwrap_or(base).trim();
    // Most names a client sends are already in this form: no copy.
    if !base
        .bytes()
        .any(|b| matches!(b, b'.' | b'_') || b.is_ascii_uppercase())
    {
        return Cow::Borrowed(base);
    }
    Cow::Owned(
        base.chars()
            .map(|c| match c {
                '.' | '_' => '-',
                c => c.to_ascii_lowercase(),
            })
            .collect(),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn usage(i: u64, o: u64) -> Usage {
        Usage {
            tokens_in: Some(i),
            tokens_out: Some(o),
            ..Usage::default()
        }
    }

    #[test]
    fn names_find_their_family_by_whole_words() {
        let p = Pricing::default();
        let input = |m: &str| p.price(m).map(|p| p.input);
        assert_eq!(input("gpt-4o"), Some(2.50));
        assert_eq!(input("gpt-4o-2024-08-06"), Some(2.50));
        assert_eq!(input("gpt-4o-mini"), Some(0.15));
        assert_eq!(input("gpt-4o-mini-2024-07-18"), Some(0.15));
        assert_eq!(input("GPT-4.1"), Some(2.0));
        assert_eq!(input("claude-3.5-sonnet"), Some(3.0));
        assert_eq!(input("claude-3-5-sonnet-20241022"), Some(3.0));
        assert_eq!(input("anthropic/claude-sonnet-4-20250514"), Some(3.0));
        assert_eq!(input("models/gemini-1.5-flash"), Some(0.075));
        // Sourcegraph Cody: provider::api-version::model.
        assert_eq!(
            input("anthropic::2024-10-22::claude-3-5-sonnet-latest"),
            Some(3.0)
        );
        assert_eq!(input("openai::2024-02-01::gpt-4o"), Some(2.50));
        assert_eq!(input("google::v1::gemini-1.5-pro-002"), Some(1.25));
        // A prefix that does not end at a word boundary is not a match.
        assert_eq!(input("gpt-4omega"), None);
        assert_eq!(input("o1x"), None);
        assert_eq!(input("my-fine-tune"), None);
        assert_eq!(input(""), None);
    }

    /// Models priced apart from the model their name starts with get
    /// their own price, and a variant the table does not know gets none
    /// rather than its base's.
    #[test]
    fn separately_priced_variants_are_not_priced_as_their_base() {
        let p = Pricing::default();
        let prices = |m: &str| p.price(m).map(|p| (p.input, p.output));
        for (model, want) in [
            ("o3-pro", (20.0, 80.0)),
            ("o3-pro-2025-06-10", (20.0, 80.0)),
            ("o1-pro", (150.0, 600.0)),
            ("gpt-5-pro", (15.0, 120.0)),
            ("gpt-4o-2024-05-13", (5.0, 15.0)),
            ("gpt-4-32k", (60.0, 120.0)),
            ("gpt-4-32k-0613", (60.0, 120.0)),
            ("gemini-2.5-flash-lite", (0.10, 0.40)),
            ("gpt-4-1106-preview", (10.0, 30.0)),
            ("gpt-4-0125-preview", (10.0, 30.0)),
            ("gpt-4-turbo-preview", (10.0, 30.0)),
            ("gemini-2.5-pro-preview-06-05", (1.25, 10.0)),
            // Their bases keep theirs.
            ("o3", (2.0, 8.0)),
            ("gpt-4o-2024-08-06", (2.50, 10.0)),
            ("gpt-4-0613", (30.0, 60.0)),
        ] {
            assert_eq!(prices(model), Some(want), "{model}");
        }
        // No pro, lite or premium rate of these is in the table: unpriced,
        // not priced at the base's rate.
        for model in [
            "o4-mini-pro",
            "gpt-4o-realtime-preview",
            "gemini-2.5-flash-lite-preview-06-17",
            "gemini-2.5-flash-preview-05-20",
            "gpt-3.5-turbo-16k",
            "gpt-5-nano-pro",
            "o3-deep-research",
            "claude-sonnet-4-pro",
        ] {
            assert_eq!(prices(model), None, "{model}");
        }
        // o1-pro has no cached-input discount.
        let u = Usage {
            tokens_in: Some(1_000_000),
            tokens_out: Some(0),
            cached_in: Some(1_000_000),
            cache_write: None,
        };
        assert_eq!(p.cost(Some("o1-pro"), &u), Some(150.0));
    }

    #[test]
    fn cost_is_per_million_tokens() {
        let p = Pricing::default();
        // gpt-4o: 1000 in at $2.50/M + 500 out at $10/M.
        let c = p.cost(Some("gpt-4o"), &usage(1000, 500)).unwrap();
        assert!((c - 0.0075).abs() < 1e-9, "{c}");
    }

    #[test]
    fn cached_and_cache_write_tokens_use_their_prices() {
        let p = Pricing::default();
        let u = Usage {
            tokens_in: Some(1_000_000 + 2_000_000 + 400_000),
            tokens_out: Some(0),
            cached_in: Some(2_000_000),
            cache_write: Some(400_000),
        };
        // claude-3-5-sonnet: 1M plain at 3, 2M read at 0.30, 0.4M write at 3.75.
        let c = p.cost(Some("claude-3-5-sonnet"), &u).unwrap();
        assert!((c - (3.0 + 0.6 + 1.5)).abs() < 1e-9, "{c}");
    }

    #[test]
    fn unknown_model_or_usage_has_no_cost() {
        let p = Pricing::default();
        assert_eq!(p.cost(None, &usage(1, 1)), None);
        assert_eq!(p.cost(Some("mystery"), &usage(1, 1)), None);
        assert_eq!(p.cost(Some("gpt-4o"), &Usage::default()), None);
    }

    #[test]
    fn overrides_win_and_add_models() {
        let price = Price {
            input: 1.0,
            output: 2.0,
            cached_input: None,
            cache_write: None,
        };
        let p = Pricing::with_overrides([("gpt-4o", price), ("house-model", price)]);
        assert_eq!(p.price("gpt-4o-2024-08-06").unwrap().input, 1.0);
        assert_eq!(p.price("house-model").unwrap().output, 2.0);
        // Untouched entries stay.
        assert_eq!(p.price("gpt-4o-mini").unwrap().input, 0.15);
        let c = p.cost(Some("house-model"), &usage(1_000_000, 0)).unwrap();
        assert!((c - 1.0).abs() < 1e-9);
    }
}
