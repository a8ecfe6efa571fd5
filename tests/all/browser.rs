//! A headless Chromium driven over WebDriver (Debian's `chromium` and `chromium-driver`), for
//! the tests of pages the server serves. The W3C WebDriver calls the tests need, over `ureq`.

use serde_json::{Value, json};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The element reference key of the W3C protocol.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A browser session; the driver is stopped when it is dropped.
pub struct Browser {
    driver: Child,
    base: String,
    agent: ureq::Agent,
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("its address").port()
}

impl Browser {
    /// Starts `chromedriver` and a headless Chromium session in it.
    pub fn start() -> Browser {
        let driver_path = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .unwrap_or_else(|| {
                panic!("the console test needs Debian's chromium and chromium-driver: apt-get install -y chromium chromium-driver (.ci/run installs them)")
            });
        let port = free_port();
        let driver = Command::new(driver_path)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let mut browser = Browser { driver, base: format!("http://127.0.0.1:{port}"), agent };
        let deadline = Instant::now() + Duration::from_secs(30);
        while browser.agent.get(format!("{}/status", browser.base)).call().is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not answer on port {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        let capabilities = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1400,1000"],
            },
        }}});
        let session = browser.send("POST", "/session", &capabilities);
        let id = session["sessionId"].as_str().unwrap_or_else(|| panic!("no browser session: {session}")).to_owned();
        browser.base = format!("{}/session/{id}", browser.base);
        // Elements are looked for up to 10 s (the page redraws its tables every second).
        browser.send("POST", "/timeouts", &json!({ "implicit": 10_000 }));
        browser
    }

    fn send(&self, method: &str, path: &str, body: &Value) -> Value {
        let url = format!("{}{path}", self.base);
        let response = match method {
            "GET" => self.agent.get(url).call(),
            "DELETE" => self.agent.delete(url).call(),
            _ => self.agent.post(url).header("Content-Type", "application/json").send(body.to_string()),
        };
        let mut response = response.unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"));
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().expect("a WebDriver answer");
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        assert!(status < 300, "WebDriver {method} {path} answered {status}: {text}");
        value["value"].clone()
    }

    /// Opens `url`.
    pub fn open(&self, url: &str) {
        self.send("POST", "/url", &json!({ "url": url }));
    }

    /// The value of a script run in the page (`return …`), with `args`.
    pub fn eval(&self, script: &str, args: &[Value]) -> Value {
        self.send("POST", "/execute/sync", &json!({ "script": script, "args": args }))
    }

    /// Waits (up to 30 s) for the script to return something other than null or false.
    pub fn wait_for(&self, what: &str, script: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let value = self.eval(script, &[]);
            if !value.is_null() && value != Value::Bool(false) {
                return value;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn element(&self, css: &str) -> String {
        let found = self.send("POST", "/element", &json!({ "using": "css selector", "value": css }));
        found[ELEMENT].as_str().unwrap_or_else(|| panic!("no element {css}: {found}")).to_owned()
    }

    /// Clicks the element `css` selects, as a user would.
    pub fn click(&self, css: &str) {
        let id = self.element(css);
        self.send("POST", &format!("/element/{id}/click"), &json!({}));
    }

    /// Clears the input `css` selects and types `text` into it.
    pub fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css);
        self.send("POST", &format!("/element/{id}/clear"), &json!({}));
        self.send("POST", &format!("/element/{id}/value"), &json!({ "text": text }));
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.agent.delete(self.base.clone()).call();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
