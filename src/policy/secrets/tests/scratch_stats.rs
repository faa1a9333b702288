use super::*;

#[test]
fn scratch_stats() {
    let code = include_str!("ordinary_code.txt");
    let mut text = String::new();
    while text.len() < 100 * 1024 {
        text.push_str(code);
    }
    let s = scanner();
    let hay = text.as_bytes();
    let ac = s.prefilter.as_ref().unwrap();
    let mut per_kw: BTreeMap<usize, usize> = BTreeMap::new();
    let mut per_rule_pass: BTreeMap<&str, (usize, usize, usize)> = BTreeMap::new();
    let mut total = 0;
    for m in ac.try_find_overlapping_iter(hay).unwrap() {
        total += 1;
        *per_kw.entry(m.pattern().as_usize()).or_default() += 1;
        for &r in &s.keyword_rules[m.pattern().as_usize()] {
            let rule = &s.rules[r];
            let win = m.start().saturating_sub(rule.before)..hay.len().min(m.start() + rule.after);
            let e = per_rule_pass.entry(&*rule.id).or_default();
            e.0 += 1;
            let w = match rule.gate {
                Some(g) => g(hay, m.range(), win),
                None => Some(win),
            };
            if let Some(w) = w {
                e.1 += 1;
                e.2 += w.len();
            }
        }
    }
    println!("total hits {total}");
    let kws: Vec<String> = {
        let mut by: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for def in super::super::rules::BUILTIN {
            for k in def.keywords {
                by.entry(k.to_ascii_lowercase()).or_default();
            }
        }
        by.into_keys().collect()
    };
    for (k, n) in &per_kw {
        println!("kw {:?}: {n}", kws[*k]);
    }
    for (r, (h, p, b)) in &per_rule_pass {
        println!("rule {r}: hits {h} pass {p} window bytes {b}");
    }
}

#[test]
fn scratch_timing() {
    let code = include_str!("ordinary_code.txt");
    let mut text = String::new();
    while text.len() < 100 * 1024 {
        text.push_str(code);
    }
    let s = scanner();
    let hay = text.as_bytes();
    let ac = s.prefilter.as_ref().unwrap();
    let t = std::time::Instant::now();
    let mut n = 0;
    for _ in 0..20 {
        n += ac.try_find_overlapping_iter(hay).unwrap().count();
    }
    println!("ac overlapping: {:?}/iter ({n})", t.elapsed() / 20);
    let t = std::time::Instant::now();
    for _ in 0..20 {
        n += ac.find_iter(hay).count();
    }
    println!("ac nonoverlapping: {:?}/iter ({n})", t.elapsed() / 20);
    let t = std::time::Instant::now();
    for _ in 0..20 {
        n += s.raw_hits(hay).len();
    }
    println!("raw_hits: {:?}/iter", t.elapsed() / 20);
    let t = std::time::Instant::now();
    for _ in 0..20 {
        n += memchr::memmem::find_iter(hay, b"token").count();
    }
    println!("memmem token: {:?}/iter {n}", t.elapsed() / 20);
}
