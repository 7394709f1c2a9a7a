//! Every file in tests/bad-configs is rejected with the message in its `.expected` file:
//! file, line and column, the field's path, and what is wrong.

use std::path::Path;

use opswat_license_exporter::config::Config;

#[test]
fn bad_configs_have_clear_messages() {
    let dir = Path::new("tests/bad-configs");
    let mut checked = 0;
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    for path in entries
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
    {
        let err = Config::load(path).expect_err(&format!("{} was accepted", path.display()));
        let message = err.to_string();
        let expected_path = path.with_extension("expected");
        if update {
            std::fs::write(&expected_path, format!("{message}\n")).unwrap();
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        assert_eq!(message, expected.trim_end(), "{}", path.display());
        assert!(
            message.starts_with(&path.display().to_string()),
            "{message}"
        );
        checked += 1;
    }
    assert!(checked >= 20, "only {checked} bad configs");
}

#[test]
fn the_example_config_is_valid() {
    // The example reads its secrets from /run/secrets and ${OPSWAT_CLIENT_ID}: provide them.
    let dir = tempfile::tempdir().unwrap();
    for name in ["opswat_client_secret", "core_prod_key", "icap_key"] {
        std::fs::write(dir.path().join(name), format!("{name}-value-1A2B\n")).unwrap();
    }
    let text = std::fs::read_to_string("examples/config.yaml")
        .unwrap()
        .replace("/run/secrets/", &format!("{}/", dir.path().display()));
    let env = |name: &str| (name == "OPSWAT_CLIENT_ID").then(|| "client-from-env".to_string());
    let config = Config::parse(
        &text,
        Path::new("examples/config.yaml"),
        Path::new("examples"),
        &env,
    )
    .unwrap();
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    let a = &config.accounts[0];
    assert_eq!(a.client_id.expose(), "client-from-env");
    assert_eq!(a.client_secret.expose(), "opswat_client_secret-value-1A2B");
    assert_eq!(a.licenses.len(), 2);
    assert_eq!(a.licenses[1].name, "****1A2B");
    assert_eq!(a.licenses[0].activations_limit, Some(10));
}
