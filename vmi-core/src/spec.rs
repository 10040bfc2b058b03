//! The XML specfile: which devices to load and how they form the chains
//! (VMI 2.1: the specfile named by `VMI_SPECFILE`).
//!
//! Schema (documented with examples in `specfiles/README.md`):
//!
//! ```xml
//! <vmi version="1">
//!   <device name="tcp" type="tcp" library="libvmi_tcp.so">
//!     <param name="connect_timeout_ms" value="5000"/>
//!   </device>
//!   <chain name="send"><use device="tcp"/></chain>
//!   <chain name="receive"><use device="tcp"/></chain>
//! </vmi>
//! ```
//!
//! Parsing keeps the position of every element and attribute so each error names
//! `file:line:column`. This module checks structure only; whether a chain has a transport and
//! whether parameters exist is checked once the devices are loaded (see [`crate::assembly`]).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use quick_xml::Reader;
use quick_xml::events::{BytesStart, Event};
use serde::Serialize;

/// A position in a specfile.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Location {
    /// The file as given (or `<string>` for in-memory specs).
    pub file: String,
    /// 1-based line.
    pub line: u32,
    /// 1-based column (in characters).
    pub column: u32,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// Why a specfile was refused.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The file could not be read.
    #[error("cannot read specfile {path}: {source}; check that VMI_SPECFILE names a readable file")]
    Read {
        /// The path tried.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is larger than any specfile.
    #[error(
        "specfile {path} is over {max} bytes, which no specfile needs; check that VMI_SPECFILE names a specfile"
    )]
    TooLarge {
        /// The path tried.
        path: PathBuf,
        /// The limit.
        max: u64,
    },
    /// `VMI_SPECFILE` is not set and no spec was given.
    #[error(
        "no specfile: set VMI_SPECFILE to a specfile such as specfiles/tcp.xml (or pass --spec FILE)"
    )]
    NotSet,
    /// The XML itself is malformed.
    #[error("{at}: malformed XML: {message}")]
    Syntax {
        /// Where.
        at: Location,
        /// The parser's complaint.
        message: String,
    },
    /// An element that the schema does not have at this place.
    #[error("{at}: unknown element <{found}> inside <{parent}>; expected {expected}")]
    UnknownElement {
        /// Where.
        at: Location,
        /// The element found.
        found: String,
        /// The enclosing element.
        parent: String,
        /// What may stand there.
        expected: String,
    },
    /// An attribute the element does not have.
    #[error("{at}: unknown attribute '{found}' on <{element}>; expected {expected}")]
    UnknownAttribute {
        /// Where.
        at: Location,
        /// The attribute found.
        found: String,
        /// The element.
        element: String,
        /// The attributes it takes.
        expected: String,
    },
    /// A required attribute is missing.
    #[error("{at}: <{element}> needs the attribute '{attribute}'")]
    MissingAttribute {
        /// Where the element starts.
        at: Location,
        /// The element.
        element: String,
        /// The missing attribute.
        attribute: String,
    },
    /// An attribute's value is not acceptable.
    #[error("{at}: attribute '{attribute}' = \"{value}\" is invalid: {expected}")]
    BadValue {
        /// Where.
        at: Location,
        /// The attribute.
        attribute: String,
        /// The value found.
        value: String,
        /// What is accepted.
        expected: String,
    },
    /// Two devices, chains or parameters share a name.
    #[error("{at}: duplicate {what} '{name}' (first defined at {first})")]
    Duplicate {
        /// Where the second one is.
        at: Location,
        /// "device", "chain" or "parameter".
        what: &'static str,
        /// The name.
        name: String,
        /// Where the first one is.
        first: Location,
    },
    /// A chain names a device no `<device>` defines.
    #[error(
        "{at}: chain '{chain}' uses device '{device}', which is not defined; defined devices: {defined}"
    )]
    UndefinedDevice {
        /// Where the `<use>` is.
        at: Location,
        /// The chain.
        chain: String,
        /// The name used.
        device: String,
        /// The names that are defined.
        defined: String,
    },
    /// A chain lists the same device twice.
    #[error(
        "{at}: chain '{chain}' uses device '{device}' twice; a device appears at most once per chain"
    )]
    RepeatedInChain {
        /// Where the second `<use>` is.
        at: Location,
        /// The chain.
        chain: String,
        /// The device.
        device: String,
    },
    /// A required chain is missing.
    #[error(
        "{at}: no <chain name=\"{chain}\"> defined; a specfile needs a send and a receive chain"
    )]
    MissingChain {
        /// The root element's position.
        at: Location,
        /// "send" or "receive".
        chain: &'static str,
    },
    /// A chain has no devices.
    #[error(
        "{at}: chain '{chain}' is empty; list at least one transport with <use device=\"...\"/>"
    )]
    EmptyChain {
        /// Where the chain starts.
        at: Location,
        /// The chain.
        chain: String,
    },
    /// Text where only elements belong.
    #[error("{at}: unexpected text \"{text}\" inside <{element}>; values go in attributes")]
    UnexpectedText {
        /// Where.
        at: Location,
        /// The element.
        element: String,
        /// The text (shortened).
        text: String,
    },
    /// A `<rails>` block that cannot work.
    #[error("{at}: <rails>: {message}")]
    Rails {
        /// Where.
        at: Location,
        /// What is wrong and what to do.
        message: String,
    },
}

impl SpecError {
    /// Where in the file the problem is, when known.
    pub fn location(&self) -> Option<&Location> {
        match self {
            SpecError::Read { .. } | SpecError::TooLarge { .. } | SpecError::NotSet => None,
            SpecError::Syntax { at, .. }
            | SpecError::UnknownElement { at, .. }
            | SpecError::UnknownAttribute { at, .. }
            | SpecError::MissingAttribute { at, .. }
            | SpecError::BadValue { at, .. }
            | SpecError::Duplicate { at, .. }
            | SpecError::UndefinedDevice { at, .. }
            | SpecError::RepeatedInChain { at, .. }
            | SpecError::MissingChain { at, .. }
            | SpecError::EmptyChain { at, .. }
            | SpecError::UnexpectedText { at, .. }
            | SpecError::Rails { at, .. } => Some(at),
        }
    }
}

/// One `<param name=".." value=".."/>`.
#[derive(Clone, Debug, Serialize)]
pub struct ParamSetting {
    /// Parameter name.
    pub name: String,
    /// Value as written.
    pub value: String,
    /// Where it is.
    pub at: Location,
}

/// One `<device>` block.
#[derive(Clone, Debug, Serialize)]
pub struct DeviceSpec {
    /// Instance name, used by chains.
    pub name: String,
    /// Device type: the plugin's name (`vmi_device_<type>` symbol). Defaults to `name`.
    pub type_name: String,
    /// Library path as written, if any (default `libvmi_<type>.so`).
    pub library: Option<String>,
    /// Parameters as written.
    pub params: Vec<ParamSetting>,
    /// Where the block starts.
    pub at: Location,
}

/// One device reference inside a chain.
#[derive(Clone, Debug, Serialize)]
pub struct ChainEntry {
    /// The device instance name.
    pub device: String,
    /// Where the `<use>` is.
    pub at: Location,
}

/// One `<chain>` block, devices in processing order: the send chain from the application to
/// the wire, the receive chain from the wire to the application.
#[derive(Clone, Debug, Serialize)]
pub struct ChainSpec {
    /// `send`, `receive`, or the name of an extra chain.
    pub name: String,
    /// Devices in processing order.
    pub entries: Vec<ChainEntry>,
    /// Where the block starts.
    pub at: Location,
}

/// The `<rails>` block: transports that one connection uses at once (VMI 2.1's striping
/// and failover). Large fragments are striped over every rail that is up; when a rail fails,
/// the others carry on with nothing lost.
#[derive(Clone, Debug, Serialize)]
pub struct RailsSpec {
    /// The rails, transport instance names, first the one connections start on.
    pub rails: Vec<ChainEntry>,
    /// `stripe_min`: fragments at least this long are striped (default 64 KiB).
    pub stripe_min: Option<u64>,
    /// `chunk`: the largest piece a rail carries at once (default 256 KiB).
    pub chunk: Option<u64>,
    /// Where the block starts.
    pub at: Location,
}

/// `<route chain="…" key="…" host="…"/>`: connections to peers whose key and host match
/// (`*` and `?` wildcards; a missing pattern matches anything) run on the named chain.
#[derive(Clone, Debug, Serialize)]
pub struct RouteSpec {
    /// The named chain.
    pub chain: String,
    /// The peer key pattern, if any.
    pub key: Option<String>,
    /// The peer host pattern, if any.
    pub host: Option<String>,
    /// Where the rule is.
    pub at: Location,
}

impl RouteSpec {
    /// Whether a connection to `key` at `host` takes this rule.
    pub fn matches(&self, key: &str, host: &str) -> bool {
        let m = |p: &Option<String>, v: &str| {
            p.as_deref()
                .is_none_or(|p| wildmatch::WildMatch::new(p).matches(v))
        };
        m(&self.key, key) && m(&self.host, host)
    }
}

/// A parsed, structurally valid specfile.
#[derive(Clone, Debug, Serialize)]
pub struct Spec {
    /// The file it came from (`None` for in-memory specs); library paths resolve against its
    /// directory.
    pub path: Option<PathBuf>,
    /// Devices in file order.
    pub devices: Vec<DeviceSpec>,
    /// Chains in file order.
    pub chains: Vec<ChainSpec>,
    /// The `<rails>` block, if any.
    pub rails: Option<RailsSpec>,
    /// `<route>` rules, in file order: which named chain a connection to a peer uses.
    pub routes: Vec<RouteSpec>,
    /// Where the root element is.
    pub at: Location,
}

impl Spec {
    /// Reads and parses the file named by `VMI_SPECFILE`.
    pub fn from_env() -> Result<Spec, SpecError> {
        match std::env::var_os("VMI_SPECFILE") {
            Some(p) if !p.is_empty() => Spec::from_file(Path::new(&p)),
            _ => Err(SpecError::NotSet),
        }
    }

    /// Reads and parses a specfile.
    pub fn from_file(path: &Path) -> Result<Spec, SpecError> {
        let read_err = |source| SpecError::Read {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(read_err)?;
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(
            &mut std::io::Read::take(file, MAX_SPEC_BYTES + 1),
            &mut bytes,
        )
        .map_err(read_err)?;
        if bytes.len() as u64 > MAX_SPEC_BYTES {
            return Err(SpecError::TooLarge {
                path: path.to_path_buf(),
                max: MAX_SPEC_BYTES,
            });
        }
        let text = String::from_utf8(bytes).map_err(|e| {
            read_err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("not UTF-8 text (at byte {})", e.utf8_error().valid_up_to()),
            ))
        })?;
        let mut spec = parse(&text, &path.display().to_string())?;
        spec.path = Some(path.to_path_buf());
        Ok(spec)
    }

    /// Parses specfile text; `name` is used in error locations.
    pub fn parse_str(text: &str, name: &str) -> Result<Spec, SpecError> {
        parse(text, name)
    }

    /// The device block with this instance name.
    pub fn device(&self, name: &str) -> Option<&DeviceSpec> {
        self.devices.iter().find(|d| d.name == name)
    }

    /// The chain with this name.
    pub fn chain(&self, name: &str) -> Option<&ChainSpec> {
        self.chains.iter().find(|c| c.name == name)
    }

    /// The directory library paths resolve against first.
    pub fn base_dir(&self) -> Option<&Path> {
        self.path.as_deref().and_then(Path::parent)
    }
}

/// Maps byte offsets to line:column in time linear in the file: offsets asked for mostly
/// grow, so the scan goes on from the last one (and restarts only for an earlier offset).
struct Positions<'a> {
    text: &'a str,
    file: &'a str,
    /// The last offset mapped, with its line and column.
    cursor: std::cell::Cell<(usize, u32, u32)>,
    /// Bytes scanned in all (the tests check that it stays linear in the file's length).
    scanned: std::cell::Cell<usize>,
}

impl<'a> Positions<'a> {
    fn new(text: &'a str, file: &'a str) -> Positions<'a> {
        Positions {
            text,
            file,
            cursor: std::cell::Cell::new((0, 1, 1)),
            scanned: std::cell::Cell::new(0),
        }
    }

    fn at(&self, offset: usize) -> Location {
        let offset = offset.min(self.text.len());
        let (mut from, mut line, mut column) = self.cursor.get();
        if offset < from {
            (from, line, column) = (0, 1, 1);
        }
        self.scanned.set(self.scanned.get() + (offset - from));
        for &b in &self.text.as_bytes()[from..offset] {
            if b == b'\n' {
                line += 1;
                column = 1;
            } else if b & 0xC0 != 0x80 {
                // Counts characters: UTF-8 continuation bytes do not start one.
                column += 1;
            }
        }
        self.cursor.set((offset, line, column));
        Location {
            file: self.file.to_string(),
            line,
            column,
        }
    }
}

/// Longest text from the file echoed in an error (a 10 MB attribute is not printed whole).
const MAX_ECHO: usize = 64;

/// `s`, cut to [`MAX_ECHO`] characters with a note of how long it was.
fn clip(s: &str) -> String {
    match s.char_indices().nth(MAX_ECHO) {
        Some((i, _)) => format!("{}… ({} bytes in all)", &s[..i], s.len()),
        None => s.to_string(),
    }
}

/// Largest specfile read: a spec is a few kilobytes; this guards against `/dev/zero`.
pub const MAX_SPEC_BYTES: u64 = 1 << 20;

/// One element's attributes, with positions.
struct Attrs {
    element: String,
    at: Location,
    list: Vec<(String, String, Location)>,
}

impl Attrs {
    fn read(
        start: &BytesStart<'_>,
        tag_offset: usize,
        pos: &Positions<'_>,
    ) -> Result<Attrs, SpecError> {
        let element = clip(start.name().into_inner());
        let at = pos.at(tag_offset);
        let raw_text: &str = start.as_ref();
        let raw = raw_text.as_bytes();
        let mut list = Vec::new();
        let mut search_from = element.len();
        for attr in start.attributes() {
            let attr = attr.map_err(|e| SpecError::Syntax {
                at: pos.at(tag_offset),
                message: clip(&e.to_string()),
            })?;
            let key = attr.key.into_inner().to_string();
            let rel = find(raw, key.as_bytes(), search_from).unwrap_or(0);
            search_from = rel + key.len();
            let value = attr
                .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                .map_err(|e| SpecError::Syntax {
                    at: pos.at(tag_offset),
                    message: e.to_string(),
                })?
                .into_owned();
            // +1 for the '<' that the event's bytes leave out.
            list.push((key, value, pos.at(tag_offset + 1 + rel)));
        }
        Ok(Attrs { element, at, list })
    }

    /// Fails on any attribute not in `allowed`.
    fn only(&self, allowed: &[&str]) -> Result<(), SpecError> {
        for (key, _, at) in &self.list {
            if !allowed.contains(&key.as_str()) {
                return Err(SpecError::UnknownAttribute {
                    at: at.clone(),
                    found: clip(key),
                    element: self.element.clone(),
                    expected: quote_list(allowed),
                });
            }
        }
        Ok(())
    }

    fn get(&self, key: &str) -> Option<(&str, &Location)> {
        self.list
            .iter()
            .find(|(k, _, _)| k == key)
            .map(|(_, v, at)| (v.as_str(), at))
    }

    fn required(&self, key: &str) -> Result<(&str, &Location), SpecError> {
        self.get(key).ok_or_else(|| SpecError::MissingAttribute {
            at: self.at.clone(),
            element: self.element.clone(),
            attribute: key.to_string(),
        })
    }
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if needle.is_empty() || from >= hay.len() {
        return None;
    }
    hay[from..]
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

fn quote_list(items: &[&str]) -> String {
    items
        .iter()
        .map(|i| format!("'{i}'"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn check_name(value: &str, attribute: &str, at: &Location) -> Result<(), SpecError> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(SpecError::BadValue {
            at: at.clone(),
            attribute: attribute.to_string(),
            value: clip(value),
            expected: "a name of 1 to 64 letters, digits, '_' or '-'".to_string(),
        })
    }
}

/// Where the parser is in the document.
enum Scope {
    Top,
    Root,
    Device(usize),
    Chain(usize),
    Rails,
    Leaf(String),
}

fn parse(text: &str, file: &str) -> Result<Spec, SpecError> {
    parse_counted(text, file).0
}

/// Parses, and says how many bytes the position mapping scanned.
fn parse_counted(text: &str, file: &str) -> (Result<Spec, SpecError>, usize) {
    let pos = Positions::new(text, file);
    let result = parse_with(text, &pos);
    (result, pos.scanned.get())
}

fn parse_with(text: &str, pos: &Positions<'_>) -> Result<Spec, SpecError> {
    // Name look-ups by hash: parsing stays linear in the number of elements.
    let mut device_index: HashMap<String, usize> = HashMap::new();
    let mut chain_index: HashMap<String, usize> = HashMap::new();
    let mut param_seen: HashMap<(usize, String), usize> = HashMap::new();
    let mut chain_uses: HashSet<(usize, String)> = HashSet::new();
    let mut reader = Reader::from_str(text);
    reader.config_mut().trim_text(false);
    let mut stack: Vec<Scope> = vec![Scope::Top];
    let mut root_at: Option<Location> = None;
    let mut devices: Vec<DeviceSpec> = Vec::new();
    let mut chains: Vec<ChainSpec> = Vec::new();
    let mut rails: Option<RailsSpec> = None;
    let mut routes: Vec<RouteSpec> = Vec::new();

    loop {
        let offset = reader.buffer_position() as usize;
        let event = reader.read_event().map_err(|e| SpecError::Syntax {
            at: pos.at(reader.error_position() as usize),
            message: clip(&e.to_string()),
        })?;
        let (start, empty) = match &event {
            Event::Start(s) => (Some(s.clone()), false),
            Event::Empty(s) => (Some(s.clone()), true),
            Event::End(_) => {
                stack.pop();
                continue;
            }
            Event::Text(t) => {
                let raw_text: &str = t.as_ref();
                let raw = raw_text.to_string();
                if !raw.trim().is_empty() {
                    let lead = raw.len() - raw.trim_start().len();
                    let element = match stack.last() {
                        Some(Scope::Root) => "vmi".to_string(),
                        Some(Scope::Device(_)) => "device".to_string(),
                        Some(Scope::Chain(_)) => "chain".to_string(),
                        Some(Scope::Rails) => "rails".to_string(),
                        Some(Scope::Leaf(name)) => name.clone(),
                        _ => "document".to_string(),
                    };
                    let mut shown: String = raw.trim().chars().take(40).collect();
                    if raw.trim().chars().count() > 40 {
                        shown.push('…');
                    }
                    return Err(SpecError::UnexpectedText {
                        at: pos.at(offset + lead),
                        element,
                        text: shown,
                    });
                }
                continue;
            }
            Event::CData(_) | Event::GeneralRef(_) => {
                return Err(SpecError::UnexpectedText {
                    at: pos.at(offset),
                    element: "document".to_string(),
                    text: "character data".to_string(),
                });
            }
            Event::Eof => break,
            _ => continue, // declaration, comments, processing instructions, doctype
        };
        let start = start.expect("start or empty element");
        let attrs = Attrs::read(&start, offset, pos)?;
        let scope = match stack.last().expect("scope stack never empties before Eof") {
            Scope::Top => {
                if attrs.element != "vmi" || root_at.is_some() {
                    return Err(SpecError::UnknownElement {
                        at: attrs.at.clone(),
                        found: attrs.element.clone(),
                        parent: "document".into(),
                        expected: "a single root element <vmi>".into(),
                    });
                }
                attrs.only(&["version"])?;
                if let Some((v, at)) = attrs.get("version")
                    && v != "1"
                {
                    return Err(SpecError::BadValue {
                        at: at.clone(),
                        attribute: "version".into(),
                        value: clip(v),
                        expected: "\"1\", the only specfile version this vmi reads".into(),
                    });
                }
                root_at = Some(attrs.at.clone());
                Scope::Root
            }
            Scope::Root => match attrs.element.as_str() {
                "device" => {
                    attrs.only(&["name", "type", "library"])?;
                    let (name, name_at) = attrs.required("name")?;
                    check_name(name, "name", name_at)?;
                    if let Some(&first) = device_index.get(name) {
                        return Err(SpecError::Duplicate {
                            at: attrs.at.clone(),
                            what: "device",
                            name: name.into(),
                            first: devices[first].at.clone(),
                        });
                    }
                    device_index.insert(name.to_string(), devices.len());
                    let type_name = match attrs.get("type") {
                        Some((t, at)) => {
                            check_name(t, "type", at)?;
                            t.to_string()
                        }
                        None => name.to_string(),
                    };
                    let library = match attrs.get("library") {
                        Some(("", at)) => {
                            return Err(SpecError::BadValue {
                                at: at.clone(),
                                attribute: "library".into(),
                                value: String::new(),
                                expected: "a path to a shared object; leave the attribute out for the default".into(),
                            });
                        }
                        Some((l, _)) => Some(l.to_string()),
                        None => None,
                    };
                    devices.push(DeviceSpec {
                        name: name.to_string(),
                        type_name,
                        library,
                        params: Vec::new(),
                        at: attrs.at.clone(),
                    });
                    Scope::Device(devices.len() - 1)
                }
                "chain" => {
                    attrs.only(&["name"])?;
                    let (name, name_at) = attrs.required("name")?;
                    check_name(name, "name", name_at)?;
                    if let Some(&first) = chain_index.get(name) {
                        return Err(SpecError::Duplicate {
                            at: attrs.at.clone(),
                            what: "chain",
                            name: name.into(),
                            first: chains[first].at.clone(),
                        });
                    }
                    chain_index.insert(name.to_string(), chains.len());
                    chains.push(ChainSpec {
                        name: name.to_string(),
                        entries: Vec::new(),
                        at: attrs.at.clone(),
                    });
                    Scope::Chain(chains.len() - 1)
                }
                "rails" => {
                    attrs.only(&["stripe_min", "chunk"])?;
                    if let Some(first) = &rails {
                        return Err(SpecError::Duplicate {
                            at: attrs.at.clone(),
                            what: "block",
                            name: "rails".into(),
                            first: first.at.clone(),
                        });
                    }
                    let size = |name: &str| -> Result<Option<u64>, SpecError> {
                        let Some((v, at)) = attrs.get(name) else {
                            return Ok(None);
                        };
                        match v.parse::<u64>() {
                            Ok(n) if (1..=1 << 30).contains(&n) => Ok(Some(n)),
                            _ => Err(SpecError::BadValue {
                                at: at.clone(),
                                attribute: name.into(),
                                value: clip(v),
                                expected: "a size in bytes from 1 to 1073741824".into(),
                            }),
                        }
                    };
                    rails = Some(RailsSpec {
                        rails: Vec::new(),
                        stripe_min: size("stripe_min")?,
                        chunk: size("chunk")?,
                        at: attrs.at.clone(),
                    });
                    Scope::Rails
                }
                "route" => {
                    attrs.only(&["chain", "key", "host"])?;
                    let (chain, chain_at) = attrs.required("chain")?;
                    check_name(chain, "chain", chain_at)?;
                    let pattern = |name: &str| -> Result<Option<String>, SpecError> {
                        match attrs.get(name) {
                            None => Ok(None),
                            Some((v, at)) if v.is_empty() || v.len() > 255 => {
                                Err(SpecError::BadValue {
                                    at: at.clone(),
                                    attribute: name.into(),
                                    value: clip(v),
                                    expected: "a pattern of 1 to 255 bytes (* and ? match any text and any one character)".into(),
                                })
                            }
                            Some((v, _)) => Ok(Some(v.to_string())),
                        }
                    };
                    let (key, host) = (pattern("key")?, pattern("host")?);
                    if key.is_none() && host.is_none() {
                        return Err(SpecError::BadValue {
                            at: attrs.at.clone(),
                            attribute: "key".into(),
                            value: String::new(),
                            expected: "a key or host pattern (a route for every peer is the send and receive chains' job)".into(),
                        });
                    }
                    if ["send", "receive"].contains(&chain) {
                        return Err(SpecError::BadValue {
                            at: chain_at.clone(),
                            attribute: "chain".into(),
                            value: chain.into(),
                            expected: "the name of a named chain (send and receive are every connection's without a route)".into(),
                        });
                    }
                    routes.push(RouteSpec {
                        chain: chain.into(),
                        key,
                        host,
                        at: attrs.at.clone(),
                    });
                    Scope::Leaf("route".into())
                }
                _ => {
                    return Err(SpecError::UnknownElement {
                        at: attrs.at.clone(),
                        found: attrs.element.clone(),
                        parent: "vmi".into(),
                        expected: "<device>, <chain>, <rails> or <route>".into(),
                    });
                }
            },
            Scope::Rails => {
                if attrs.element != "rail" {
                    return Err(SpecError::UnknownElement {
                        at: attrs.at.clone(),
                        found: attrs.element.clone(),
                        parent: "rails".into(),
                        expected: "<rail device=\"...\"/>".into(),
                    });
                }
                attrs.only(&["device"])?;
                let (device, _) = attrs.required("device")?;
                let block = rails.as_mut().expect("inside <rails>");
                if block.rails.iter().any(|r| r.device == device) {
                    return Err(SpecError::Rails {
                        at: attrs.at.clone(),
                        message: format!(
                            "device '{}' is listed twice; a transport is one rail",
                            clip(device)
                        ),
                    });
                }
                block.rails.push(ChainEntry {
                    device: device.into(),
                    at: attrs.at.clone(),
                });
                Scope::Leaf("rail".into())
            }
            Scope::Device(i) => {
                let i = *i;
                if attrs.element != "param" {
                    return Err(SpecError::UnknownElement {
                        at: attrs.at.clone(),
                        found: attrs.element.clone(),
                        parent: "device".into(),
                        expected: "<param name=\"...\" value=\"...\"/>".into(),
                    });
                }
                attrs.only(&["name", "value"])?;
                let (name, name_at) = attrs.required("name")?;
                check_name(name, "name", name_at)?;
                let (value, _) = attrs.required("value")?;
                if let Some(&first) = param_seen.get(&(i, name.to_string())) {
                    return Err(SpecError::Duplicate {
                        at: attrs.at.clone(),
                        what: "parameter",
                        name: name.into(),
                        first: devices[i].params[first].at.clone(),
                    });
                }
                param_seen.insert((i, name.to_string()), devices[i].params.len());
                devices[i].params.push(ParamSetting {
                    name: name.into(),
                    value: value.into(),
                    at: attrs.at.clone(),
                });
                Scope::Leaf("param".into())
            }
            Scope::Chain(i) => {
                let i = *i;
                if attrs.element != "use" {
                    return Err(SpecError::UnknownElement {
                        at: attrs.at.clone(),
                        found: attrs.element.clone(),
                        parent: "chain".into(),
                        expected: "<use device=\"...\"/>".into(),
                    });
                }
                attrs.only(&["device"])?;
                let (device, _) = attrs.required("device")?;
                let chain = &mut chains[i];
                if !chain_uses.insert((i, device.to_string())) {
                    return Err(SpecError::RepeatedInChain {
                        at: attrs.at.clone(),
                        chain: chain.name.clone(),
                        device: clip(device),
                    });
                }
                chain.entries.push(ChainEntry {
                    device: device.into(),
                    at: attrs.at.clone(),
                });
                Scope::Leaf("use".into())
            }
            Scope::Leaf(parent) => {
                return Err(SpecError::UnknownElement {
                    at: attrs.at.clone(),
                    found: attrs.element.clone(),
                    parent: parent.clone(),
                    expected: "no child elements".into(),
                });
            }
        };
        if !empty {
            stack.push(scope);
        }
    }

    let root_at = root_at.ok_or_else(|| SpecError::Syntax {
        at: pos.at(0),
        message: "the file has no <vmi> root element".into(),
    })?;
    let defined: HashSet<&str> = devices.iter().map(|d| d.name.as_str()).collect();
    for chain in &chains {
        if chain.entries.is_empty() {
            return Err(SpecError::EmptyChain {
                at: chain.at.clone(),
                chain: chain.name.clone(),
            });
        }
        for entry in &chain.entries {
            if !defined.contains(entry.device.as_str()) {
                let mut names: Vec<&str> = defined.iter().copied().collect();
                names.sort_unstable();
                return Err(SpecError::UndefinedDevice {
                    at: entry.at.clone(),
                    chain: chain.name.clone(),
                    device: clip(&entry.device),
                    defined: if names.is_empty() {
                        "(none)".into()
                    } else {
                        quote_list(&names)
                    },
                });
            }
        }
    }
    if let Some(block) = &rails {
        if block.rails.len() < 2 {
            return Err(SpecError::Rails {
                at: block.at.clone(),
                message: format!(
                    "{} rail(s) listed; list at least two transports, each as <rail device=\"...\"/>",
                    block.rails.len()
                ),
            });
        }
        for entry in &block.rails {
            if !defined.contains(entry.device.as_str()) {
                let mut names: Vec<&str> = defined.iter().copied().collect();
                names.sort_unstable();
                return Err(SpecError::Rails {
                    at: entry.at.clone(),
                    message: format!(
                        "rail '{}' is not a defined device; defined devices: {}",
                        clip(&entry.device),
                        quote_list(&names)
                    ),
                });
            }
        }
    }
    for required in ["send", "receive"] {
        if !chains.iter().any(|c| c.name == required) {
            return Err(SpecError::MissingChain {
                at: root_at.clone(),
                chain: required,
            });
        }
    }
    Ok(Spec {
        path: None,
        devices,
        chains,
        rails,
        routes,
        at: root_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"<?xml version="1.0"?>
<!-- a comment -->
<vmi version="1">
  <device name="tcp" library="libvmi_tcp.so">
    <param name="connect_timeout_ms" value="2000"/>
  </device>
  <device name="skel" type="skeleton"/>
  <chain name="send"><use device="skel"/><use device="tcp"/></chain>
  <chain name="receive"><use device="tcp"/><use device="skel"/></chain>
  <chain name="control"><use device="tcp"/></chain>
</vmi>
"#;

    #[test]
    fn endless_and_huge_files_are_refused_before_reading_them_whole() {
        let e = Spec::from_file(Path::new("/dev/zero")).unwrap_err();
        assert!(matches!(e, SpecError::TooLarge { .. }), "{e}");
        assert!(e.to_string().contains("over 1048576 bytes"), "{e}");
    }

    /// 16,000 devices on one line and on many: the position mapping scans each byte about
    /// once (it scanned the file once per element before), and name look-ups are hashed.
    #[test]
    fn parsing_is_linear_in_the_file() {
        for sep in ["", "\n"] {
            let mut t = String::from("<vmi>");
            for i in 0..16_000 {
                t.push_str(&format!("<device name=\"d{i}\" type=\"skeleton\"/>{sep}"));
            }
            t.push_str("<chain name=\"send\"><use device=\"d0\"/></chain>");
            t.push_str("<chain name=\"receive\"><use device=\"d0\"/></chain>");
            t.push_str("<device name=\"d15999\"/></vmi>");
            let (r, scanned) = parse_counted(&t, "big.xml");
            let e = r.unwrap_err();
            assert!(matches!(e, SpecError::Duplicate { .. }), "{e}");
            assert!(
                scanned <= 2 * t.len(),
                "scanned {scanned} bytes of a {}-byte file",
                t.len()
            );
        }
    }

    #[test]
    fn long_values_are_not_echoed_whole() {
        let big = "x".repeat(10 << 20);
        for text in [
            format!("<vmi version=\"{big}\"/>"),
            format!("<vmi><device name=\"{big}\"/></vmi>"),
            format!("<vmi><{big}/></vmi>"),
            format!("<vmi><device name=\"a\" {big}=\"1\"/></vmi>"),
        ] {
            let e = err(&text).to_string();
            assert!(e.len() < 600, "{} bytes of error: {}", e.len(), &e[..200]);
            assert!(e.contains("bytes in all"), "{e}");
        }
    }

    fn err(text: &str) -> SpecError {
        Spec::parse_str(text, "t.xml").expect_err("spec should be refused")
    }

    fn loc(e: &SpecError) -> (u32, u32) {
        let l = e.location().expect("error has a location");
        (l.line, l.column)
    }

    #[test]
    fn parses_a_valid_file() {
        let spec = Spec::parse_str(GOOD, "good.xml").unwrap();
        assert_eq!(spec.devices.len(), 2);
        assert_eq!(spec.devices[0].type_name, "tcp");
        assert_eq!(spec.devices[0].library.as_deref(), Some("libvmi_tcp.so"));
        assert_eq!(spec.devices[0].params[0].name, "connect_timeout_ms");
        assert_eq!(spec.devices[0].params[0].value, "2000");
        assert_eq!(
            (
                spec.devices[0].params[0].at.line,
                spec.devices[0].params[0].at.column
            ),
            (5, 5)
        );
        assert_eq!(spec.devices[1].type_name, "skeleton");
        let send = spec.chain("send").unwrap();
        assert_eq!(
            send.entries
                .iter()
                .map(|e| e.device.as_str())
                .collect::<Vec<_>>(),
            ["skel", "tcp"]
        );
        assert!(spec.chain("control").is_some());
        assert_eq!((spec.at.line, spec.at.column), (3, 1));
    }

    #[test]
    fn unknown_element_is_located() {
        let e = err("<vmi>\n  <devise name=\"x\"/>\n</vmi>");
        assert!(
            matches!(e, SpecError::UnknownElement { ref found, .. } if found == "devise"),
            "{e}"
        );
        assert_eq!(loc(&e), (2, 3));
        assert!(
            e.to_string()
                .starts_with("t.xml:2:3: unknown element <devise>"),
            "{e}"
        );
    }

    #[test]
    fn unknown_attribute_is_located() {
        let e = err("<vmi>\n  <device name=\"tcp\" libary=\"x.so\"/>\n</vmi>");
        assert!(
            matches!(e, SpecError::UnknownAttribute { ref found, .. } if found == "libary"),
            "{e}"
        );
        assert_eq!(loc(&e), (2, 22));
    }

    #[test]
    fn duplicate_device_names_the_first() {
        let e = err("<vmi>\n<device name=\"a\"/>\n<device name=\"a\"/>\n</vmi>");
        match &e {
            SpecError::Duplicate { what, first, .. } => {
                assert_eq!(*what, "device");
                assert_eq!((first.line, first.column), (2, 1));
            }
            other => panic!("wrong error {other}"),
        }
        assert_eq!(loc(&e), (3, 1));
    }

    #[test]
    fn undefined_device_in_chain() {
        let e = err(
            "<vmi>\n<device name=\"tcp\"/>\n<chain name=\"send\">\n  <use device=\"tpc\"/>\n</chain>\n</vmi>",
        );
        assert!(
            matches!(e, SpecError::UndefinedDevice { ref device, .. } if device == "tpc"),
            "{e}"
        );
        assert_eq!(loc(&e), (4, 3));
        assert!(
            e.to_string().contains("'tcp'"),
            "lists the defined devices: {e}"
        );
    }

    #[test]
    fn missing_receive_chain() {
        let e = err(
            "<vmi>\n<device name=\"tcp\"/>\n<chain name=\"send\"><use device=\"tcp\"/></chain>\n</vmi>",
        );
        assert!(
            matches!(
                e,
                SpecError::MissingChain {
                    chain: "receive",
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(loc(&e), (1, 1));
    }

    #[test]
    fn empty_chain() {
        let e = err("<vmi>\n<chain name=\"send\">\n</chain>\n</vmi>");
        assert!(matches!(e, SpecError::EmptyChain { .. }), "{e}");
        assert_eq!(loc(&e), (2, 1));
    }

    #[test]
    fn malformed_xml_is_located() {
        let e = err("<vmi>\n<device name=\"tcp\">\n</vmi>");
        assert!(matches!(e, SpecError::Syntax { .. }), "{e}");
        assert_eq!(loc(&e).0, 3);
    }

    #[test]
    fn missing_attribute_and_bad_names() {
        let e = err("<vmi>\n <device type=\"tcp\"/>\n</vmi>");
        assert!(
            matches!(e, SpecError::MissingAttribute { ref attribute, .. } if attribute == "name")
        );
        assert_eq!(loc(&e), (2, 2));
        let e = err("<vmi><device name=\"a b\"/></vmi>");
        assert!(matches!(e, SpecError::BadValue { .. }), "{e}");
        let e = err("<vmi version=\"2\"/>");
        assert!(matches!(e, SpecError::BadValue { ref attribute, .. } if attribute == "version"));
    }

    #[test]
    fn stray_text_and_nested_elements() {
        let e = err("<vmi>\n  hello\n</vmi>");
        assert!(matches!(e, SpecError::UnexpectedText { .. }), "{e}");
        assert_eq!(loc(&e), (2, 3));
        let e = err(
            "<vmi><device name=\"a\"><param name=\"x\" value=\"1\"><x/></param></device></vmi>",
        );
        assert!(
            matches!(e, SpecError::UnknownElement { ref parent, .. } if parent == "param"),
            "{e}"
        );
    }

    #[test]
    fn repeated_device_in_chain_and_duplicate_param() {
        let e = err(
            "<vmi><device name=\"a\"/><chain name=\"send\"><use device=\"a\"/><use device=\"a\"/></chain></vmi>",
        );
        assert!(matches!(e, SpecError::RepeatedInChain { .. }), "{e}");
        let e = err(
            "<vmi><device name=\"a\"><param name=\"p\" value=\"1\"/>\n<param name=\"p\" value=\"2\"/></device></vmi>",
        );
        assert!(
            matches!(
                e,
                SpecError::Duplicate {
                    what: "parameter",
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(loc(&e), (2, 1));
    }

    #[test]
    fn no_root() {
        let e = err("<!-- nothing -->");
        assert!(matches!(e, SpecError::Syntax { .. }), "{e}");
        let e = err("<vmi/><vmi/>");
        assert!(matches!(e, SpecError::UnknownElement { .. }), "{e}");
    }
}

/// Fuzz target for the specfile parser (proptest on the stable toolchain, a short run in
/// every `cargo test`; `PROPTEST_CASES=100000 cargo test -p vmi-runtime spec_fuzz` for a long
/// one): arbitrary text and mutated valid specfiles never panic, every error has a place in
/// the file (or is about the file itself), and no error echoes more than a bounded amount.
#[cfg(test)]
mod spec_fuzz {
    use proptest::prelude::*;

    use super::*;

    const VALID: &str = r#"<vmi version="1"><device name="tcp"><param name="port" value="9"/></device><device name="crc"/><chain name="send"><use device="crc"/><use device="tcp"/></chain><chain name="receive"><use device="tcp"/><use device="crc"/></chain></vmi>"#;

    fn check(text: &str) {
        match Spec::parse_str(text, "fuzz.xml") {
            Ok(spec) => {
                assert!(spec.chain("send").is_some() && spec.chain("receive").is_some());
            }
            Err(e) => {
                let shown = e.to_string();
                assert!(
                    shown.len() < 2000,
                    "an error of {} bytes for {} bytes of input",
                    shown.len(),
                    text.len()
                );
                assert!(e.location().is_some(), "an error without a place: {shown}");
            }
        }
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in ".{0,400}") {
            check(&text);
        }

        #[test]
        fn mutated_specfiles_never_panic(
            edits in proptest::collection::vec((0usize..VALID.len(), any::<u8>(), 0u8..3), 1..8),
        ) {
            let mut bytes = VALID.as_bytes().to_vec();
            for (at, b, how) in edits {
                let at = at.min(bytes.len());
                match how {
                    0 => { if at < bytes.len() { bytes[at] = b; } }
                    1 => bytes.insert(at, b),
                    _ => { if at < bytes.len() { bytes.remove(at); } }
                }
            }
            check(&String::from_utf8_lossy(&bytes));
        }
    }
}
