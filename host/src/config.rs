//! remotes.yaml: the operator's repositories, parsed strictly and compiled once.
//!
//! The file keeps the shape users of the earlier system already have: a
//! top-level `remotes:` map from repository name to its entry. Unknown fields
//! are an error naming the field, so a typo never silently changes behaviour.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use regex::Regex;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// The file as written.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Who may write (and read private repositories); none = open to all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthSection>,
    /// Repositories by name.
    pub remotes: BTreeMap<String, RepoEntry>,
}

/// The `auth:` section as written.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    /// Users by name.
    #[serde(default)]
    pub users: BTreeMap<String, UserEntry>,
}

/// One user as written under `auth.users`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UserEntry {
    /// The environment variable holding the password (the password itself
    /// never appears in the file).
    pub password_env: String,
    /// Repositories this user may write; `"*"` = every repository.
    #[serde(default)]
    pub write: Vec<String>,
}

/// How a repository is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RepoKind {
    /// Artifacts are uploaded here.
    Local,
    /// Artifacts are fetched from `base_url` and cached.
    Remote,
    /// Artifacts come from `members`, in order.
    Virtual,
}

impl RepoKind {
    /// The name used in remotes.yaml.
    pub fn as_str(self) -> &'static str {
        match self {
            RepoKind::Local => "local",
            RepoKind::Remote => "remote",
            RepoKind::Virtual => "virtual",
        }
    }
}

/// Cache lifetimes in seconds.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CacheEntry {
    /// Lifetime of immutable objects; 0 keeps them forever.
    #[serde(default)]
    pub immutable_ttl: u64,
    /// Lifetime of mutable objects (indexes, tags) before they are revalidated.
    #[serde(default = "default_mutable_ttl")]
    pub mutable_ttl: u64,
    /// How long an upstream 404 is remembered; 0 turns it off.
    #[serde(default = "default_negative_ttl")]
    pub negative_ttl: u64,
}

impl Default for CacheEntry {
    fn default() -> Self {
        CacheEntry {
            immutable_ttl: 0,
            mutable_ttl: default_mutable_ttl(),
            negative_ttl: default_negative_ttl(),
        }
    }
}

fn default_mutable_ttl() -> u64 {
    3600
}

fn default_negative_ttl() -> u64 {
    30
}

/// One repository as written in remotes.yaml.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RepoEntry {
    /// `local`, `remote` or `virtual`.
    #[serde(rename = "type")]
    pub kind: RepoKind,
    /// The package format: `generic` or the package type of a loaded plugin.
    pub package: String,
    /// The upstream of a remote repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    /// Free text for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Upstream credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Upstream credentials; never shown by `/config`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Allowlist of regular expressions (the Python version's name).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include_patterns: Vec<String>,
    /// Allowlist of regular expressions (the Go version's name).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub patterns: Vec<String>,
    /// Denylist of regular expressions, checked before the allowlist.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blocklist: Vec<String>,
    /// Paths forced mutable.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mutable_patterns: Vec<String>,
    /// Paths forced immutable.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub immutable_patterns: Vec<String>,
    /// Revalidate expired mutable objects with conditional requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check_mutable_updates: Option<bool>,
    /// Cache lifetimes.
    #[serde(default)]
    pub cache: CacheEntry,
    /// Refuse immutable artifacts published recently.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub quarantine_new: bool,
    /// How recent "recently" is, in days.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quarantine_days: Option<u32>,
    /// Docker tags that may not be pulled.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ban_tags: Vec<String>,
    /// Members of a virtual repository, in lookup order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<String>,
    /// Per-format settings handed to the plugin as written.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub settings: BTreeMap<String, serde_json::Value>,
    /// Whether clients without credentials may read (default true); only
    /// matters when the configuration has an `auth:` section.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anonymous_read: Option<bool>,
}

/// The package type served without a plugin: plain files.
pub const GENERIC: &str = "generic";
/// The package type of OCI images, served on `/v2` by the host's registry.
pub const DOCKER: &str = "docker";

/// A repository ready to serve: its entry plus compiled patterns.
#[derive(Debug)]
pub struct Repo {
    /// The repository's name.
    pub name: String,
    /// The entry as written.
    pub entry: RepoEntry,
    /// `base_url` without a trailing slash (remote repositories).
    pub base_url: Option<String>,
    /// `include_patterns` and `patterns` together.
    pub allow: Vec<Regex>,
    /// `blocklist`.
    pub block: Vec<Regex>,
    /// `mutable_patterns`.
    pub mutable: Vec<Regex>,
    /// `immutable_patterns`.
    pub immutable: Vec<Regex>,
    /// `settings` as a JSON object text, as plugins receive it.
    pub settings_json: String,
    /// Origins (`scheme://host:port`) this repository's upstream requests
    /// may reach: its `base_url` and every URL among its settings' values.
    pub origins: Vec<String>,
    /// The repositories a plugin call for this one may look into: itself
    /// and its members.
    pub scope_repos: Vec<String>,
}

impl Repo {
    /// Whether clients without credentials may read it.
    pub fn anonymous_read(&self) -> bool {
        self.entry.anonymous_read.unwrap_or(true)
    }

    /// `local`, `remote` or `virtual`.
    pub fn kind(&self) -> RepoKind {
        self.entry.kind
    }

    /// The package type.
    pub fn package(&self) -> &str {
        &self.entry.package
    }

    /// Whether it holds OCI images (served on `/v2`, not by a plugin).
    pub fn is_docker(&self) -> bool {
        self.package() == DOCKER
    }
}

fn upstream_origins(base_url: Option<&str>, entry: &RepoEntry) -> Vec<String> {
    let mut origins = Vec::new();
    origins.extend(base_url.and_then(origin_of));
    for value in entry.settings.values() {
        let listed = value.as_array().into_iter().flatten();
        for text in std::iter::once(value)
            .chain(listed)
            .filter_map(|v| v.as_str())
        {
            origins.extend(origin_of(text));
        }
    }
    origins
}

/// The origin of an http(s) URL, normalised with its explicit or default port.
pub fn origin_of(url: &str) -> Option<String> {
    let parsed = reqwest::Url::parse(url).ok()?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return None;
    }
    Some(format!(
        "{}://{}:{}",
        parsed.scheme(),
        parsed.host_str()?.to_ascii_lowercase(),
        parsed.port_or_known_default()?
    ))
}

/// The whole configuration, compiled.
#[derive(Debug)]
pub struct Config {
    /// Repositories by name.
    pub repos: BTreeMap<String, Arc<Repo>>,
    /// The users, when the file has an `auth:` section.
    pub auth: Option<Auth>,
    /// The file as written, for `/config`.
    pub file: ConfigFile,
}

/// The `auth:` section, compiled: passwords read from the environment.
#[derive(Debug)]
pub struct Auth {
    /// Users by name.
    pub users: BTreeMap<String, User>,
}

/// A user who may authenticate.
pub struct User {
    /// sha256 of the password.
    pub password_sha256: [u8; 32],
    /// Every repository may be written.
    pub write_all: bool,
    /// The repositories this user may write.
    pub write: BTreeSet<String>,
}

impl User {
    /// Whether this user may write repository `repo`; `"*"` asks for
    /// every repository at once.
    pub fn may_write(&self, repo: &str) -> bool {
        self.write_all || (repo != "*" && self.write.contains(repo))
    }
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("write_all", &self.write_all)
            .field("write", &self.write)
            .finish_non_exhaustive()
    }
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The YAML does not parse or does not fit the schema.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A value is wrong; the message names the field.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong, naming `remotes.<name>.<field>`.
        message: String,
    },
}

impl Config {
    /// Reads and compiles a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Parses and compiles configuration text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let file: ConfigFile = serde_saphyr::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_string(),
            message: e.to_string(),
        })?;
        Config::compile(file).map_err(|message| ConfigError::Invalid {
            path: origin.to_string(),
            message,
        })
    }

    fn compile(file: ConfigFile) -> Result<Config, String> {
        let mut repos = BTreeMap::new();
        for (name, entry) in &file.remotes {
            repos.insert(name.clone(), Arc::new(compile_repo(name, entry)?));
        }
        for repo in repos.values() {
            check_members(repo, &repos)?;
        }
        let auth = file
            .auth
            .as_ref()
            .map(|section| compile_auth(section, &repos))
            .transpose()?;
        Ok(Config { repos, auth, file })
    }

    /// The repository with this name.
    pub fn repo(&self, name: &str) -> Option<&Arc<Repo>> {
        self.repos.get(name)
    }

    /// The configuration as JSON with every secret replaced.
    pub fn redacted(&self) -> serde_json::Value {
        let mut file = self.file.clone();
        for entry in file.remotes.values_mut() {
            if entry.password.is_some() {
                entry.password = Some("********".into());
            }
        }
        serde_json::to_value(&file).unwrap_or_default()
    }
}

fn valid_repo_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !name.starts_with('.')
}

fn compile_patterns(repo: &str, field: &str, patterns: &[String]) -> Result<Vec<Regex>, String> {
    patterns
        .iter()
        .enumerate()
        .map(|(i, p)| {
            Regex::new(p)
                .map_err(|e| format!("remotes.{repo}.{field}[{i}]: invalid regex {p:?}: {e}"))
        })
        .collect()
}

fn compile_repo(name: &str, entry: &RepoEntry) -> Result<Repo, String> {
    if !valid_repo_name(name) {
        return Err(format!(
            "remotes.{name}: repository names use letters, digits, '-', '_' and '.'"
        ));
    }
    if entry.package.is_empty() || !valid_repo_name(&entry.package) {
        return Err(format!(
            "remotes.{name}.package: invalid package type {:?}",
            entry.package
        ));
    }
    let base_url = match (entry.kind, &entry.base_url) {
        (RepoKind::Remote, None) => {
            return Err(format!(
                "remotes.{name}.base_url: required for a remote repository"
            ))
        }
        (RepoKind::Remote, Some(url)) => {
            if origin_of(url).is_none() {
                return Err(format!(
                    "remotes.{name}.base_url: not an http(s) URL: {url:?}"
                ));
            }
            Some(url.trim_end_matches('/').to_string())
        }
        (kind, Some(_)) => {
            return Err(format!(
                "remotes.{name}.base_url: a {} repository has no upstream",
                kind.as_str()
            ))
        }
        (_, None) => None,
    };
    match entry.kind {
        RepoKind::Virtual if entry.members.is_empty() => {
            return Err(format!(
                "remotes.{name}.members: a virtual repository needs members"
            ))
        }
        RepoKind::Local | RepoKind::Remote if !entry.members.is_empty() => {
            return Err(format!(
                "remotes.{name}.members: only virtual repositories have members"
            ))
        }
        _ => {}
    }
    if entry.quarantine_days == Some(0) {
        return Err(format!(
            "remotes.{name}.quarantine_days: must be at least 1"
        ));
    }
    let mut allow = compile_patterns(name, "include_patterns", &entry.include_patterns)?;
    allow.extend(compile_patterns(name, "patterns", &entry.patterns)?);
    let settings_json = serde_json::to_string(&entry.settings)
        .map_err(|e| format!("remotes.{name}.settings: {e}"))?;
    let origins = upstream_origins(base_url.as_deref(), entry);
    let scope_repos = std::iter::once(name.to_string())
        .chain(entry.members.iter().cloned())
        .collect();
    Ok(Repo {
        name: name.to_string(),
        entry: entry.clone(),
        origins,
        scope_repos,
        base_url,
        allow,
        block: compile_patterns(name, "blocklist", &entry.blocklist)?,
        mutable: compile_patterns(name, "mutable_patterns", &entry.mutable_patterns)?,
        immutable: compile_patterns(name, "immutable_patterns", &entry.immutable_patterns)?,
        settings_json,
    })
}

/// User names travel in HTTP Basic credentials, so they hold no `:`.
fn valid_user_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'))
}

fn compile_auth(
    section: &AuthSection,
    repos: &BTreeMap<String, Arc<Repo>>,
) -> Result<Auth, String> {
    let mut users = BTreeMap::new();
    for (name, entry) in &section.users {
        if !valid_user_name(name) {
            return Err(format!(
                "auth.users.{name}: user names use letters, digits, '-', '_', '.' and '@'"
            ));
        }
        let var = &entry.password_env;
        let password = match std::env::var(var) {
            Ok(password) if !password.is_empty() => password,
            Ok(_) => {
                return Err(format!(
                    "auth.users.{name}.password_env: the environment variable {var:?} is empty"
                ))
            }
            Err(std::env::VarError::NotPresent) => {
                return Err(format!(
                    "auth.users.{name}.password_env: the environment variable {var:?} is not set"
                ))
            }
            Err(std::env::VarError::NotUnicode(_)) => {
                return Err(format!(
                    "auth.users.{name}.password_env: the environment variable {var:?} is not valid UTF-8"
                ))
            }
        };
        let mut write = BTreeSet::new();
        let mut write_all = false;
        for (i, repo) in entry.write.iter().enumerate() {
            if repo == "*" {
                write_all = true;
            } else if repos.contains_key(repo) {
                write.insert(repo.clone());
            } else {
                return Err(format!(
                    "auth.users.{name}.write[{i}]: no repository named {repo:?}"
                ));
            }
        }
        users.insert(
            name.clone(),
            User {
                password_sha256: Sha256::digest(password.as_bytes()).into(),
                write_all,
                write,
            },
        );
    }
    Ok(Auth { users })
}

fn check_members(repo: &Repo, repos: &BTreeMap<String, Arc<Repo>>) -> Result<(), String> {
    for (i, member) in repo.entry.members.iter().enumerate() {
        let field = format!("remotes.{}.members[{i}]", repo.name);
        let Some(target) = repos.get(member) else {
            return Err(format!("{field}: no repository named {member:?}"));
        };
        if target.kind() == RepoKind::Virtual {
            return Err(format!(
                "{field}: {member:?} is virtual; members are local or remote"
            ));
        }
        if target.package() != repo.package() {
            return Err(format!(
                "{field}: {member:?} is a {} repository, not {}",
                target.package(),
                repo.package()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
remotes:
  files:
    type: remote
    package: generic
    base_url: "https://files.example.org/"
    password: secret
    mutable_patterns: ["latest/.*"]
    cache:
      immutable_ttl: 0
      mutable_ttl: 60
  uploads:
    type: local
    package: generic
  all:
    type: virtual
    package: generic
    members: [uploads, files]
"#;

    #[test]
    fn sample_compiles() {
        let config = Config::parse(SAMPLE, "test").unwrap();
        let files = config.repo("files").unwrap();
        assert_eq!(files.base_url.as_deref(), Some("https://files.example.org"));
        assert_eq!(files.entry.cache.mutable_ttl, 60);
        assert_eq!(
            config.repo("uploads").unwrap().entry.cache.mutable_ttl,
            3600
        );
        assert_eq!(
            files.origins,
            vec!["https://files.example.org:443".to_string()]
        );
        let redacted = config.redacted().to_string();
        assert!(!redacted.contains("secret"));
    }

    #[test]
    fn unknown_field_is_named() {
        let text = "remotes:\n  a:\n    type: remote\n    package: generic\n    base_url: http://x\n    mutable_ttl: 5\n";
        let err = Config::parse(text, "remotes.yaml").unwrap_err().to_string();
        assert!(err.contains("mutable_ttl"), "{err}");
        assert!(err.contains("line") || err.contains(":6"), "{err}");
    }

    #[test]
    fn bad_regex_names_the_field() {
        let text = "remotes:\n  a:\n    type: remote\n    package: generic\n    base_url: http://x\n    blocklist: [\"(\"]\n";
        let err = Config::parse(text, "remotes.yaml").unwrap_err().to_string();
        assert!(err.contains("remotes.a.blocklist[0]"), "{err}");
    }

    fn with_auth(users: &str) -> String {
        format!(
            "auth:\n  users:\n{users}remotes:\n  up:\n    type: local\n    package: generic\n  private:\n    type: local\n    package: generic\n    anonymous_read: false\n"
        )
    }

    #[test]
    fn auth_users_compile_and_stay_secret() {
        std::env::set_var("ARTIFACTAPI_TEST_CONFIG_CI", "s3cret-value");
        std::env::set_var("ARTIFACTAPI_TEST_CONFIG_ADMIN", "other-value");
        let text = with_auth(
            "    ci:\n      password_env: ARTIFACTAPI_TEST_CONFIG_CI\n      write: [up]\n    admin:\n      password_env: ARTIFACTAPI_TEST_CONFIG_ADMIN\n      write: [\"*\"]\n",
        );
        let config = Config::parse(&text, "r").unwrap();
        let auth = config.auth.as_ref().unwrap();
        let ci = &auth.users["ci"];
        assert_eq!(
            ci.password_sha256,
            <[u8; 32]>::from(Sha256::digest(b"s3cret-value"))
        );
        assert!(ci.may_write("up"));
        assert!(!ci.may_write("private"));
        assert!(!ci.may_write("*"));
        assert!(auth.users["admin"].may_write("private"));
        assert!(auth.users["admin"].may_write("*"));
        assert!(config.repo("up").unwrap().anonymous_read());
        assert!(!config.repo("private").unwrap().anonymous_read());
        let shown = format!("{} {config:?}", config.redacted());
        assert!(shown.contains("ARTIFACTAPI_TEST_CONFIG_CI"), "{shown}");
        assert!(!shown.contains("s3cret-value"), "{shown}");
        assert!(!shown.contains("password_sha256"), "{shown}");
    }

    #[test]
    fn unset_or_empty_password_env_is_named() {
        std::env::remove_var("ARTIFACTAPI_TEST_CONFIG_UNSET");
        let text = with_auth("    ci:\n      password_env: ARTIFACTAPI_TEST_CONFIG_UNSET\n");
        let err = Config::parse(&text, "r").unwrap_err().to_string();
        assert!(err.contains("auth.users.ci.password_env"), "{err}");
        assert!(err.contains("ARTIFACTAPI_TEST_CONFIG_UNSET"), "{err}");
        std::env::set_var("ARTIFACTAPI_TEST_CONFIG_EMPTY", "");
        let text = with_auth("    ci:\n      password_env: ARTIFACTAPI_TEST_CONFIG_EMPTY\n");
        let err = Config::parse(&text, "r").unwrap_err().to_string();
        assert!(err.contains("auth.users.ci.password_env"), "{err}");
        assert!(err.contains("empty"), "{err}");
    }

    #[test]
    fn write_must_name_a_repository() {
        std::env::set_var("ARTIFACTAPI_TEST_CONFIG_WRITE", "pw");
        let text = with_auth(
            "    ci:\n      password_env: ARTIFACTAPI_TEST_CONFIG_WRITE\n      write: [up, nowhere]\n",
        );
        let err = Config::parse(&text, "r").unwrap_err().to_string();
        assert!(err.contains("auth.users.ci.write[1]"), "{err}");
        assert!(err.contains("nowhere"), "{err}");
    }

    #[test]
    fn auth_fields_are_strict() {
        std::env::set_var("ARTIFACTAPI_TEST_CONFIG_STRICT", "pw");
        let text = with_auth(
            "    ci:\n      password_env: ARTIFACTAPI_TEST_CONFIG_STRICT\n      password: pw\n",
        );
        let err = Config::parse(&text, "r").unwrap_err().to_string();
        assert!(err.contains("password"), "{err}");
        let text = with_auth("    \"a:b\":\n      password_env: ARTIFACTAPI_TEST_CONFIG_STRICT\n");
        let err = Config::parse(&text, "r").unwrap_err().to_string();
        assert!(err.contains("auth.users.a:b"), "{err}");
    }

    #[test]
    fn no_auth_section_means_no_users() {
        let config = Config::parse(SAMPLE, "test").unwrap();
        assert!(config.auth.is_none());
        assert!(config.redacted().get("auth").is_none());
    }

    #[test]
    fn virtual_members_must_exist_and_match() {
        let text = "remotes:\n  v:\n    type: virtual\n    package: pypi\n    members: [x]\n";
        let err = Config::parse(text, "r").unwrap_err().to_string();
        assert!(err.contains("remotes.v.members[0]"), "{err}");
    }
}
