//! The test page in a real browser: headless Debian Chromium, driven by playwright-core
//! (`test-script/browser/two-pages.mjs`), two pages exchanging messages through
//! `linker domain`, then acknowledging them across a resume, then in a channel. Needs
//! `scripts/setup-browser.sh` to have run (the README's test command does it).

use std::path::Path;

use testkit::{Deployment, Embedded};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_browser_pages_chat_through_the_test_page() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let script = root.join("test-script/browser/two-pages.mjs");
    assert!(
        root.join("test-script/browser/node_modules/playwright-core")
            .exists()
            && Path::new("/usr/bin/chromium").exists(),
        "Chromium or playwright-core is missing: run scripts/setup-browser.sh"
    );
    let d = Embedded::start(Path::new(env!("CARGO_BIN_EXE_linker")))
        .await
        .unwrap();
    let out = tokio::process::Command::new("node")
        .arg(&script)
        .env("LINKER_PAGE_URL", format!("http://{}/", d.page_addr()))
        .env("LINKER_WS_URL", d.ws_url(0))
        .env(
            "LINKER_SCREENSHOT_DIR",
            std::env::temp_dir().join("linker-browser-test"),
        )
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "browser test failed\n{stdout}\n{stderr}\n{}",
        d.log_tail()
    );
    assert!(stdout.contains("two-pages: PASS"), "{stdout}");
}
