//! A packument of about 20 MB: rewritten in every form, with the memory the
//! rewrite allocates measured by a counting allocator (the one test in this
//! binary, so nothing else allocates meanwhile).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use plugin_npm::packument::{rewrite_packument, Form, Links};

/// The system allocator, counting the bytes in use and their peak.
struct Counting;

static IN_USE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            let now = IN_USE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        IN_USE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const BASE: &str = "https://npm.example.org";
const PUBLIC: &str = "http://127.0.0.1:8000/api/v1/remote/npm";
const VERSIONS: usize = 8_000;

/// A packument shaped like a busy real one: many versions, each with
/// dependencies, scripts, people and a readme of its own.
fn big_packument() -> String {
    let mut versions = Vec::with_capacity(VERSIONS);
    let mut times = Vec::with_capacity(VERSIONS);
    for i in 0..VERSIONS {
        let version = format!("{}.{}.{}", i / 1000, (i / 10) % 100, i % 10);
        let dependencies: Vec<String> = (0..25)
            .map(|d| format!(r#""dependency-number-{d}":"^{d}.{i}.0""#))
            .collect();
        versions.push(format!(
            r#""{version}":{{"name":"big","version":"{version}","description":"A package with a long history","main":"lib/index.js","scripts":{{"test":"mocha","postinstall":"node install.js"}},"dependencies":{{{deps}}},"devDependencies":{{"mocha":"^10.0.0","eslint":"^8.0.0"}},"engines":{{"node":">=14"}},"maintainers":[{{"name":"someone","email":"someone@example.org"}}],"_npmUser":{{"name":"someone","email":"someone@example.org"}},"readme":"{readme}","dist":{{"integrity":"sha512-{pad}","shasum":"0123456789abcdef0123456789abcdef01234567","tarball":"{BASE}/big/-/big-{version}.tgz","fileCount":12,"unpackedSize":34567}}}}"#,
            deps = dependencies.join(","),
            readme = "Usage notes. ".repeat(80),
            pad = "A".repeat(86),
        ));
        times.push(format!(
            r#""{version}":"2020-01-01T{:02}:{:02}:{:02}.000Z""#,
            i / 3600,
            i / 60 % 60,
            i % 60
        ));
    }
    format!(
        r#"{{"_id":"big","name":"big","dist-tags":{{"latest":"{latest}"}},"versions":{{{versions}}},"time":{{"created":"2020-01-01T00:00:00.000Z",{times},"modified":"2020-01-01T03:00:00.000Z"}},"readme":"{readme}"}}"#,
        latest = "7.99.9",
        versions = versions.join(","),
        times = times.join(","),
        readme = "Top-level readme. ".repeat(4000),
    )
}

/// Rewrites `text` and returns the output and the peak of extra memory.
fn measured(text: &str, form: Form, hide_after: Option<u64>) -> (Vec<u8>, usize, usize) {
    let links = Links {
        base_url: BASE,
        public_url: PUBLIC,
    };
    let before = IN_USE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let started = Instant::now();
    let rewritten = rewrite_packument(text, links, form, hide_after).unwrap();
    let elapsed = started.elapsed();
    let extra = PEAK.load(Ordering::Relaxed) - before;
    println!(
        "{form:?} (hide after {hide_after:?}): {} -> {} bytes in {elapsed:?}, {extra} extra bytes at peak",
        text.len(),
        rewritten.body.len(),
    );
    let published = rewritten.published.len();
    (rewritten.body, extra, published)
}

#[test]
fn a_20_mb_packument_is_rewritten_within_three_times_its_size() {
    let text = big_packument();
    assert!(
        (18 << 20..26 << 20).contains(&text.len()),
        "{} bytes",
        text.len()
    );
    // The input is one copy; the rewrite may add at most two more.
    let budget = 2 * text.len();

    let (full, extra, published) = measured(&text, Form::Full, None);
    assert!(extra <= budget, "full: {extra} > {budget}");
    assert_eq!(published, VERSIONS);
    let doc: serde_json::Value = serde_json::from_slice(&full).unwrap();
    drop(full);
    let versions = doc["versions"].as_object().unwrap();
    assert_eq!(versions.len(), VERSIONS);
    assert_eq!(
        versions["7.99.9"]["dist"]["tarball"],
        format!("{PUBLIC}/big/-/big-7.99.9.tgz")
    );
    assert_eq!(doc["readme"].as_str().unwrap().len(), 18 * 4000);
    drop(doc);

    let (abbreviated, extra, _) = measured(&text, Form::Abbreviated, None);
    assert!(extra <= budget, "abbreviated: {extra} > {budget}");
    assert!(abbreviated.len() < text.len() * 3 / 5);
    let doc: serde_json::Value = serde_json::from_slice(&abbreviated).unwrap();
    assert_eq!(doc["versions"].as_object().unwrap().len(), VERSIONS);
    assert_eq!(doc["versions"]["0.0.0"]["hasInstallScript"], true);
    assert_eq!(doc["versions"]["0.0.0"].get("readme"), None);
    drop(doc);

    // 2020-01-01T01:00:00Z: the versions of the first hour stay.
    let (filtered, extra, _) = measured(&text, Form::Full, Some(1_577_840_400));
    assert!(extra <= budget, "quarantined: {extra} > {budget}");
    let doc: serde_json::Value = serde_json::from_slice(&filtered).unwrap();
    assert_eq!(doc["versions"].as_object().unwrap().len(), 3_601);
    assert_eq!(doc["dist-tags"]["latest"], "3.60.0");
}
