//! `GET /openapi.json` against the running host: a valid document whose every operation the
//! host really serves (the unit test in `http` checks the other way: every route the router
//! holds is documented).

use crate::harness::Host;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread")]
async fn openapi_json_describes_what_the_host_serves() {
    let host = Host::start();
    host.open_account("101", 10).await;
    let doc = host.get("/openapi.json").await.expect(200).body;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{}", doc["openapi"]);
    assert_eq!(doc["info"]["title"], "Cairn");
    assert_eq!(doc["components"]["securitySchemes"]["admin_token"]["scheme"], "bearer");
    let error = &doc["components"]["schemas"]["ErrorBody"];
    assert_eq!(error["required"][0], "error", "the one error shape: {error}");

    let paths = doc["paths"].as_object().unwrap();
    let mut operations = 0;
    for (path, item) in paths {
        for (method, operation) in item.as_object().unwrap() {
            operations += 1;
            let responses = operation["responses"].as_object().unwrap();
            for (status, response) in responses.iter().filter(|(s, _)| s.starts_with(['4', '5'])) {
                let schema = &response["content"]["application/json"]["schema"]["$ref"];
                assert_eq!(schema, "#/components/schemas/ErrorBody", "{method} {path} {status}");
            }
            if operation.get("security").is_some() {
                assert!(responses.contains_key("401"), "{method} {path} says it can refuse a token");
            }
            // The host serves it: whatever it answers, it is not the router's fallback.
            let url = format!("{}{}", host.url, sample(path));
            let request = match method.as_str() {
                "get" => host.http.get(&url),
                "post" => host.http.post(&url),
                "put" => host.http.put(&url),
                "delete" => host.http.delete(&url),
                other => panic!("{other} {path}: a method the API does not use"),
            };
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let body: Value = if path == "/events/stream" {
                Value::Null
            } else {
                response.json().await.unwrap_or(Value::Null)
            };
            let code = body["error"]["code"].as_str().unwrap_or("");
            assert!(
                !matches!(code, "not_found" | "method_not_allowed"),
                "{method} {path} is documented but not served: {status} {body}"
            );
        }
    }
    assert!(operations >= 25, "{operations} operations");
    let deploy = &paths["/components/{name}"]["put"];
    assert!(deploy["requestBody"]["content"]["application/wasm"].is_object(), "{deploy}");
    let command = &paths["/aggregates/{type}/{id}/commands"]["post"];
    let body = &command["requestBody"]["content"]["application/json"]["schema"]["$ref"];
    assert_eq!(body, "#/components/schemas/CommandBody");

    // What is sent has the fields the document names, no more and no fewer.
    let components = host.get("/components").await.expect(200).body;
    let listed = &paths["/components"]["get"]["responses"]["200"]["content"]["application/json"];
    assert_eq!(listed["schema"]["items"]["$ref"], "#/components/schemas/ComponentJson", "{listed}");
    let component = &components[0];
    assert_eq!(fields(component), properties(&doc, "ComponentJson"), "{component}");
    assert_eq!(fields(&component["versions"][0]), properties(&doc, "VersionJson"), "{component}");
    let switched = host.admin_post("/components/account/activate?version=1").await.expect(200).body;
    assert_eq!(fields(&switched), properties(&doc, "SwitchedJson"), "{switched}");
}

fn fields(answer: &Value) -> Vec<String> {
    let mut names: Vec<String> = answer.as_object().expect("an object").keys().cloned().collect();
    names.sort();
    names
}

fn properties(doc: &Value, schema: &str) -> Vec<String> {
    fields(&doc["components"]["schemas"][schema]["properties"])
}

/// A request path for a documented path: each `{parameter}` given a value.
fn sample(path: &str) -> String {
    path.replace("{type}", "account")
        .replace("{id}", "101")
        .replace("{name}", "account")
        .replace("{version}", "1")
        .replace("{correlation_id}", "none")
        .replace("{subscriber}", "account")
        .replace("{projection}", "account-info")
        .replace("{key}", "101")
}
