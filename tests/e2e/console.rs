//! The web console at `/ui`, driven in headless Chromium against a real `cairn serve`: what
//! a person does in the page and what the page must then show.

use crate::browser::Browser;
use crate::harness::Host;
use serde_json::{Value, json};
use std::time::Duration;

/// A host and a browser on its console, or `None` when browser tests are skipped.
async fn console(test: &str) -> Option<(Host, Browser)> {
    let browser = Browser::open(test).await?;
    Some((Host::start(), browser))
}

#[track_caller]
fn assert_no_console_errors(errors: &[String], page: &str) {
    assert!(errors.is_empty(), "{page} wrote errors to the browser console:\n{}", errors.join("\n"));
}

/// The rows of the live log as `(stream, type)`, newest first.
const LOG_ROWS: &str = "return [...document.querySelectorAll('#log-rows tr')].map(r => \
    [r.querySelector('a.stream').textContent, r.dataset.type])";

fn rows(value: &Value) -> Vec<(String, String)> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|row| (row[0].as_str().unwrap().to_owned(), row[1].as_str().unwrap().to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_command_sent_from_the_form_appears_live_in_the_log_and_pause_holds_events_back() {
    let Some((host, browser)) = console("console::live_log").await else { return };
    browser.goto(&format!("{}/ui", host.url)).await;
    browser
        .wait_for(
            "the live log to connect",
            "return document.getElementById('log-state')?.textContent === 'live'",
        )
        .await;
    let log_window = browser.client.window().await.unwrap();

    // A second window sends the command through the form while the first one watches.
    let send_window = browser.client.new_window(false).await.unwrap();
    browser.client.switch_to_window(send_window.handle).await.unwrap();
    browser.goto(&format!("{}/ui/#/send", host.url)).await;
    browser.choose("#send-type", "account").await;
    browser.type_into("#send-id", "live-1").await;
    browser.type_into("#send-command-type", "OpenAccount").await;
    browser.type_into("#send-data", r#"{"initial_balance": 4200}"#).await;
    let correlation = browser.eval("return document.getElementById('send-correlation').value", vec![]).await;
    let correlation = correlation.as_str().unwrap().to_owned();
    browser.click("#send-submit").await;
    let accepted = browser.text_of("#send-accepted").await;
    assert!(accepted.contains("account/live-1 is at version 1"), "{accepted}");
    browser.screenshot("send-answer").await;
    // The answer links to the saga the command started, under the id the form sent.
    let saga_link =
        browser.eval("return document.getElementById('send-open-saga').getAttribute('href')", vec![]).await;
    assert_eq!(saga_link, json!(format!("#/saga/{correlation}")));
    assert_eq!(host.state("account", "live-1").await["balance"], 4200);
    assert_no_console_errors(&browser.console_errors().await, "the send page");

    browser.client.switch_to_window(log_window).await.unwrap();
    let shown = browser
        .wait_for(
            "the AccountOpened of account/live-1 in the log",
            &format!("{LOG_ROWS}.find(r => r[0] === 'account/live-1')"),
        )
        .await;
    assert_eq!(shown, json!(["account/live-1", "AccountOpened"]));
    let correlation_shown = browser
        .eval("return document.querySelector('#log-rows tr a.correlation').getAttribute('href')", vec![])
        .await;
    assert_eq!(correlation_shown, json!(format!("#/saga/{correlation}")));

    // Paused, the page shows nothing new; resumed, it shows what was committed meanwhile, once.
    browser.click("#log-pause").await;
    assert_eq!(browser.text_of("#log-state").await, "paused");
    host.command("account", "live-1", "CreditAccount", json!({"amount": 100, "transaction_id": "t1"}))
        .await
        .expect(200);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let while_paused = rows(&browser.eval(LOG_ROWS, vec![]).await);
    assert!(!while_paused.iter().any(|(_, t)| t == "AccountCredited"), "paused, yet: {while_paused:?}");
    browser.click("#log-pause").await;
    browser
        .wait_for("the credit after resuming", &format!("{LOG_ROWS}.some(r => r[1] === 'AccountCredited')"))
        .await;
    let after = rows(&browser.eval(LOG_ROWS, vec![]).await);
    assert_eq!(after.iter().filter(|(_, t)| t == "AccountCredited").count(), 1, "{after:?}");
    assert_eq!(
        after[0],
        ("account/live-1".to_owned(), "AccountCredited".to_owned()),
        "newest first: {after:?}"
    );

    // A stream filter: only that stream's events arrive.
    browser.type_into("#filter-stream", "account/live-2").await;
    browser.click("#log-filters button[type=submit]").await;
    browser.wait_for("the filtered log to connect", "return location.hash.includes('stream=') && document.getElementById('log-state')?.textContent === 'live'").await;
    host.open_account("live-3", 1).await;
    host.open_account("live-2", 2).await;
    browser
        .wait_for(
            "account/live-2 in the filtered log",
            &format!("{LOG_ROWS}.some(r => r[0] === 'account/live-2')"),
        )
        .await;
    let filtered = rows(&browser.eval(LOG_ROWS, vec![]).await);
    assert!(filtered.iter().all(|(stream, _)| stream == "account/live-2"), "{filtered:?}");
    assert_no_console_errors(&browser.console_errors().await, "the live log");
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_transfer_sent_from_the_form_opens_as_a_saga_across_its_three_streams() {
    let Some((host, browser)) = console("console::saga").await else { return };
    host.open_account("s-101", 10_000).await;
    host.open_account("s-202", 0).await;
    browser.goto(&format!("{}/ui/#/send?type=money-transfer", host.url)).await;
    browser.type_into("#send-command-type", "CreateMoneyTransfer").await;
    browser
        .type_into("#send-data", r#"{"from_account_id": "s-101", "to_account_id": "s-202", "amount": 2500}"#)
        .await;
    browser.click("#send-submit").await;
    let accepted = browser.text_of("#send-accepted").await;
    assert!(accepted.contains("money-transfer/"), "{accepted}");
    let transfer = browser
        .eval("return document.querySelector('#send-accepted a.stream').textContent", vec![])
        .await
        .as_str()
        .unwrap()
        .to_owned();

    // From the answer to the saga it started; the page follows it to the end.
    browser.click("#send-open-saga").await;
    let cards = browser
        .wait_for(
            "the five events of the transfer on the timeline",
            "const cards = [...document.querySelectorAll('.saga-event')]; \
             return cards.length >= 5 ? cards.map(c => [c.dataset.stream, c.dataset.type]) : null",
        )
        .await;
    let expected = json!([
        [transfer, "MoneyTransferCreated"],
        ["account/s-101", "AccountDebited"],
        [transfer, "MoneyTransferDebitRecorded"],
        ["account/s-202", "AccountCredited"],
        [transfer, "MoneyTransferCompleted"],
    ]);
    assert_eq!(cards, expected);
    let lanes = browser
        .eval("return [...document.querySelectorAll('.lane-head')].map(l => l.textContent)", vec![])
        .await;
    assert_eq!(lanes, json!([transfer, "account/s-101", "account/s-202"]));
    // Each event after the first was caused by the one before it: four arrows, in that chain.
    let positions: Vec<u64> = browser
        .eval(
            "return [...document.querySelectorAll('.saga-event')].map(c => Number(c.dataset.position))",
            vec![],
        )
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap())
        .collect();
    let arrows = browser
        .eval("return [...document.querySelectorAll('path.causation')].map(p => p.dataset.link)", vec![])
        .await;
    let chain: Vec<String> = positions.windows(2).map(|pair| format!("{}->{}", pair[0], pair[1])).collect();
    assert_eq!(arrows, json!(chain));

    // Selecting an event shows what caused it.
    browser.click(".saga-event[data-type='AccountCredited']").await;
    let detail = browser.text_of("#saga-detail").await;
    assert!(detail.contains("MoneyTransferDebitRecorded"), "{detail}");
    browser.screenshot("saga-selected").await;
    assert_eq!(host.state("account", "s-202").await["balance"], 2500);
    assert_no_console_errors(&browser.console_errors().await, "the saga page");

    // A saga's own step sent from the form is refused by the host, and the page says why.
    let id = transfer.trim_start_matches("money-transfer/");
    browser.goto(&format!("{}/ui/#/send?type=money-transfer&id={id}", host.url)).await;
    browser.type_into("#send-command-type", "RecordDebit").await;
    browser.click("#send-submit").await;
    let refused = browser.text_of("#send-error").await;
    assert!(refused.contains("403") && refused.contains("internal_command"), "{refused}");
    assert!(refused.contains("only the host's reactions may send it"), "{refused}");
    let events = host.get(&format!("/aggregates/money-transfer/{id}/events")).await.expect(200);
    assert_eq!(events.body["events"].as_array().unwrap().len(), 3, "nothing stored");

    // A saga started with a traceparent links its trace, to the viewer this browser names.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let data = json!({"from_account_id": "s-101", "to_account_id": "s-202", "amount": 1});
    let traced = host
        .command_request("money-transfer", "s-traced", "CreateMoneyTransfer", data)
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .header("x-correlation-id", "s-traced");
    host.send(traced).await.expect(200);
    browser.goto(&format!("{}/ui/#/saga/s-traced", host.url)).await;
    let link = browser
        .wait_for(
            "the trace link",
            "const a = document.querySelector('#saga-trace a.trace'); return a ? a.href : null",
        )
        .await;
    assert_eq!(link, json!(format!("http://localhost:16686/trace/{trace}")));
    let viewer = "const input = document.querySelector('#saga-trace-viewer'); \
        input.value = 'https://traces.example/t/{trace_id}?x=1'; \
        input.dispatchEvent(new Event('change')); return null";
    browser.eval(viewer, vec![]).await;
    let link = browser
        .wait_for(
            "the trace link to the viewer named",
            "const a = document.querySelector('#saga-trace a.trace'); \
             return a && a.href.startsWith('https://traces.example') ? a.href : null",
        )
        .await;
    assert_eq!(link, json!(format!("https://traces.example/t/{trace}?x=1")));
    browser.close().await;
}

/// The version the host says is active for the account component.
async fn active_account_version(host: &Host) -> Value {
    let components = host.get("/components").await.expect(200).body;
    let account = components.as_array().unwrap().iter().find(|c| c["name"] == "account").cloned();
    account.expect("the account component is listed")["active_version"].clone()
}

/// Wait until the components page shows `version` (`v2`) as the account's active one.
async fn wait_account_active_in_page(browser: &Browser, version: &str) {
    let script = format!(
        "return document.querySelector(\"[data-component='account'] .active-number\")?.textContent === '{version}'"
    );
    browser.wait_for(&format!("account {version} active on the page"), &script).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deploy_without_the_token_is_refused_in_the_page_and_with_it_the_new_version_is_active() {
    let Some((host, browser)) = console("console::deploy").await else { return };
    let dir = tempfile::tempdir().unwrap();
    let wasm = dir.path().join("account-v2.wasm");
    std::fs::write(&wasm, cairn_artifacts::ACCOUNT_V2).unwrap();

    browser.goto(&format!("{}/ui/#/components", host.url)).await;
    wait_account_active_in_page(&browser, "v1").await;
    browser.type_into("#deploy-file", wasm.to_str().unwrap()).await;
    browser.type_into("#deploy-name", "account").await;
    browser.click("#deploy-submit").await;
    let refusal = browser.text_of("#admin-refusal").await;
    assert!(refusal.contains("401") && refusal.contains("Enter the admin token"), "{refusal}");
    assert_eq!(active_account_version(&host).await, 1, "refused, so nothing changed");

    // A wrong token is refused too, and says so.
    browser.type_into("#admin-token", "not-the-token").await;
    browser.click("#token-save").await;
    browser.click("#deploy-submit").await;
    browser
        .wait_for(
            "the wrong token's refusal",
            "return document.getElementById('admin-refusal')?.textContent.includes('not the host')",
        )
        .await;

    browser.type_into("#admin-token", "test-token").await;
    browser.click("#token-save").await;
    assert_eq!(browser.text_of("#token-state").await, "kept for this tab");
    // The token is kept in the session's storage, not in the address.
    let kept =
        browser.eval("return [sessionStorage.getItem('cairn.admin-token'), location.href]", vec![]).await;
    assert_eq!(kept[0], "test-token");
    assert!(!kept[1].as_str().unwrap().contains("test-token"), "{kept}");
    browser.click("#deploy-submit").await;
    let report = browser.text_of("#deploy-report").await;
    assert!(report.contains("account version 2 is active"), "{report}");
    wait_account_active_in_page(&browser, "v2").await;
    let versions = browser
        .eval("return [...document.querySelectorAll(\"[data-component='account'] tbody tr\")].map(r => r.dataset.version)", vec![])
        .await;
    assert_eq!(versions, json!(["2", "1"]));
    browser.screenshot("components-deployed").await;
    assert_eq!(active_account_version(&host).await, 2);

    // Rolling back from the page makes version 1 active again; Activate brings back 2.
    browser.click("[data-component='account'] button.rollback").await;
    wait_account_active_in_page(&browser, "v1").await;
    browser.click("[data-component='account'] tr[data-version='2'] button.activate").await;
    wait_account_active_in_page(&browser, "v2").await;
    assert_eq!(active_account_version(&host).await, 2);
    browser.close().await;
}

/// Every page with something on it: each must load without a single console error.
#[tokio::test(flavor = "multi_thread")]
async fn every_page_of_the_console_loads_without_errors_in_the_browser_console() {
    let Some((host, browser)) = console("console::pages").await else { return };
    host.open_account("101", 25_000).await;
    host.open_account("202", 500).await;
    let transfer = host
        .send(
            host.command_request(
                "money-transfer",
                "t-1",
                "CreateMoneyTransfer",
                json!({"from_account_id": "101", "to_account_id": "202", "amount": 5500}),
            )
            .header("X-Correlation-Id", "saga-1"),
        )
        .await
        .expect(200);
    assert_eq!(transfer.body["id"], "t-1");
    host.command("customer", "c1", "CreateCustomer", json!({"name": "Fred", "credit_limit": 200000}))
        .await
        .expect(200);
    host.command("order", "o1", "CreateOrder", json!({"customer_id": "c1", "order_total": 1234}))
        .await
        .expect(200);

    let pages: [(&str, &str, &str); 11] = [
        ("log", "#/log", "return document.querySelectorAll('#log-rows tr').length >= 8"),
        (
            "log-filtered",
            "#/log?stream_type=account",
            "return document.querySelectorAll('#log-rows tr').length >= 4",
        ),
        (
            "aggregate-lookup",
            "#/aggregate",
            "return document.querySelectorAll('#recent-streams a.stream').length === 5",
        ),
        (
            "aggregate",
            "#/aggregate/account/101",
            "return document.getElementById('aggregate-state')?.textContent.includes('19500')",
        ),
        (
            "aggregate-version",
            "#/aggregate/account/101?version=1",
            "return document.getElementById('aggregate-state')?.textContent.includes('25000')",
        ),
        (
            "aggregate-missing",
            "#/aggregate/account/nobody",
            "return document.querySelector('#aggregate .notice')?.textContent.includes('has no events')",
        ),
        ("saga", "#/saga/saga-1", "return document.querySelectorAll('.saga-event').length === 5"),
        ("saga-lookup", "#/saga", "return !!document.getElementById('saga-lookup')"),
        (
            "send",
            "#/send?type=account&id=101",
            "return document.getElementById('send-type')?.value === 'account'",
        ),
        ("components", "#/components", "return document.querySelectorAll('.component').length === 7"),
        (
            "routing",
            "#/routing",
            "return !!document.getElementById('subscriber-table') && !!document.getElementById('projection-table') && document.querySelectorAll('#view-keys li button').length >= 2",
        ),
    ];
    // Load each page fresh, as a person following a link would.
    for (name, fragment, ready) in pages {
        browser.goto(&format!("{}/ui/{fragment}", host.url)).await;
        browser.wait_for(&format!("the {name} page to show its content"), ready).await;
        // Give late requests (the status line, follow-up fetches) time to fail if they would.
        tokio::time::sleep(Duration::from_millis(400)).await;
        browser.screenshot(name).await;
        let mut errors = browser.console_errors().await;
        if name == "aggregate-missing" {
            // The host's 404 for a stream with no events is the page's answer, not a fault
            // of the page; Chromium logs every non-2xx fetch. Only that one is allowed.
            let expected = "/aggregates/account/nobody - Failed to load resource: the server responded with a status of 404";
            errors.retain(|error| !error.contains(expected));
        }
        assert_no_console_errors(&errors, name);
    }

    // The recently written streams, newest first, lead to their aggregate pages.
    browser.goto(&format!("{}/ui/#/aggregate", host.url)).await;
    let recent = browser
        .wait_for(
            "the recent streams",
            "const links = [...document.querySelectorAll('#recent-streams a.stream')].map(a => a.textContent); \
             return links.length === 5 ? links : null",
        )
        .await;
    // Each stream once (the sagas interleave, so only the set is certain).
    let mut recent: Vec<String> = serde_json::from_value(recent).unwrap();
    recent.sort();
    assert_eq!(recent, ["account/101", "account/202", "customer/c1", "money-transfer/t-1", "order/o1"]);

    // Moving the version picker shows the state after that version.
    browser.goto(&format!("{}/ui/#/aggregate/account/101", host.url)).await;
    browser
        .wait_for(
            "the latest state",
            "return document.getElementById('aggregate-state')?.textContent.includes('19500')",
        )
        .await;
    browser.type_into("#version-number", "1").await;
    browser
        .eval("document.getElementById('version-number').dispatchEvent(new Event('change'))", vec![])
        .await;
    browser
        .wait_for(
            "the state after version 1",
            "return location.hash.endsWith('?version=1') && document.getElementById('aggregate-state')?.textContent.includes('25000')",
        )
        .await;
    let dimmed = browser.eval("return document.querySelectorAll('tr.after-picked').length", vec![]).await;
    assert_eq!(dimmed, 1, "the debit after version 1 is dimmed");

    // A view's document opens from its key.
    browser.goto(&format!("{}/ui/#/routing", host.url)).await;
    browser.click("#view-keys li button").await;
    let document = browser.text_of("#view-document").await;
    assert!(document.contains("account-info/101") && document.contains("\"balance\": 19500"), "{document}");

    // Keyboard: the number keys move between pages.
    browser.goto(&format!("{}/ui/", host.url)).await;
    browser.wait_for("the log", "return document.getElementById('log-state')?.textContent === 'live'").await;
    browser.client.active_element().await.unwrap().send_keys("5").await.unwrap();
    browser
        .wait_for(
            "the components page after pressing 5",
            "return location.hash === '#/components' && document.querySelectorAll('.component').length === 7",
        )
        .await;
    assert_no_console_errors(&browser.console_errors().await, "keyboard navigation");
    browser.close().await;
}

/// The parked sequences of `subscriber` as `(stream, position)`, from the API.
async fn parked(host: &Host, subscriber: &str) -> Vec<(String, u64)> {
    let answer = host.get(&format!("/routing/dead-letters?subscriber={subscriber}")).await.expect(200);
    let letters = answer.body["dead_letters"].as_array().unwrap().clone();
    letters
        .iter()
        .map(|l| (l["stream"].as_str().unwrap().to_owned(), l["position"].as_u64().unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_letters_are_retried_and_discarded_from_the_routing_page_with_the_token() {
    let Some((host, browser)) = console("console::dead_letters").await else { return };
    host.deploy("faulty", cairn_test_guests::FAULTY).await.expect(200);
    host.open_account("p", 100).await;
    for transaction in ["poison", "after-poison"] {
        host.command("account", "p", "CreditAccount", json!({"amount": 1, "transaction_id": transaction}))
            .await
            .expect(200);
    }
    crate::sagas::eventually("account/p to park for faulty", || async {
        parked(&host, "faulty").await.len() == 2
    })
    .await;

    browser.goto(&format!("{}/ui/#/routing", host.url)).await;
    let sequence = "#dead-letter-table tr[data-subscriber='faulty'][data-stream='account/p']";
    let shown = browser.text_of(sequence).await;
    assert!(shown.contains("AccountCredited") && shown.contains("react failed"), "{shown}");
    browser.screenshot("routing-dead-letters").await;

    // Without the token the host refuses, and the page says so; nothing is released.
    browser.click(&format!("{sequence} button.retry")).await;
    let refused = browser.text_of("#routing-result").await;
    assert!(refused.contains("401") && refused.contains("Enter the admin token"), "{refused}");
    assert_eq!(parked(&host, "faulty").await.len(), 2);

    // With the token and a fixed version, Retry delivers the sequence in order.
    browser.type_into("#admin-token", "test-token").await;
    browser.click("#token-save").await;
    host.deploy("faulty", cairn_test_guests::FAULTY_FIXED).await.expect(200);
    browser.click(&format!("{sequence} button.retry")).await;
    browser
        .wait_for(
            "the retried sequence to leave the page",
            "return document.getElementById('dead-letters')?.textContent.includes('No dead letters')",
        )
        .await;
    assert_eq!(parked(&host, "faulty").await, Vec::<(String, u64)>::new());
    let notes = host.state("faulty", "p").await["notes"].clone();
    assert_eq!(notes, json!(["poison", "after-poison"]));

    // A forged host command parks; Discard asks once more, then drops the sequence.
    host.open_account("q", 100).await;
    host.command("account", "q", "CreditAccount", json!({"amount": 1, "transaction_id": "forge"}))
        .await
        .expect(200);
    crate::sagas::eventually("account/q to park", || async { parked(&host, "faulty").await.len() == 1 })
        .await;
    let sequence = "#dead-letter-table tr[data-subscriber='faulty'][data-stream='account/q']";
    browser.text_of(sequence).await;
    browser.click(&format!("{sequence} button.danger")).await;
    assert_eq!(browser.text_of(&format!("{sequence} button.danger")).await, "Really discard?");
    assert_eq!(parked(&host, "faulty").await.len(), 1, "one click only asks");
    browser.click(&format!("{sequence} button.danger")).await;
    browser
        .wait_for(
            "the discarded sequence to leave the page",
            "return document.getElementById('dead-letters')?.textContent.includes('No dead letters')",
        )
        .await;
    assert_eq!(parked(&host, "faulty").await, Vec::<(String, u64)>::new());
    let result = browser.text_of("#routing-result").await;
    assert!(result.contains("Discarded"), "{result}");

    // Rebuild a projection from the page (the token is kept): it comes back running.
    browser.click("#projection-table tr[data-projection='account-info'] button").await;
    browser.wait_for("the rebuild to start", "return document.getElementById('routing-result')?.textContent.startsWith('Rebuild of account-info')").await;
    crate::sagas::eventually("the rebuild to finish", || async {
        let views = host.get("/views").await.expect(200).body;
        let info = views["projections"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "account-info")
            .unwrap()
            .clone();
        info["status"] == "running" && info["rebuilds_completed"] == 1
    })
    .await;
    browser.close().await;
}
