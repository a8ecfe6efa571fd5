//! Deploy: validate a tenant's module, discover its actions, compile it once (through the on-disk
//! cache) and prepare it for instantiation.
//!
//! Everything a module is refused for is checked on its bytes before a single function is
//! compiled: size, validity, complexity caps, imports, action signatures, memory and table
//! maxima. Each refusal names the culprit.

use crate::abi::{self, ActionCtx, Linking};
use crate::error::Error;
use crate::limits::DeployLimits;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use wasmparser::{Encoding, ExternalKind, Parser, Payload, TypeRef, ValidPayload, Validator, WasmFeatures};
use wasmtime::{InstancePre, Linker, Module, ModuleExport};

/// The action that, when an app exports it, receives every failure of the app's other actions
/// (as the JSON input `{"failure":{"kind":..,"action":..,"message":..}}`).
pub const ERROR_ACTION: &str = "on_error";

/// Wasm page size (modules may not use custom page sizes here).
const PAGE: u64 = 64 << 10;

/// Why a module was refused. Each names what is wrong and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeployError {
    /// Over the module size limit.
    #[error("the module is {size} bytes, over the limit of {limit}")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Not a WebAssembly binary at all.
    #[error("these bytes are not a WebAssembly module (no `\\0asm` header)")]
    NotWasm,
    /// A component rather than a core module.
    #[error(
        "this is a WebAssembly component; Turnstile runs core modules (build for wasm32-unknown-unknown or wasm32-wasip1)"
    )]
    Component,
    /// Fails WebAssembly validation.
    #[error("invalid WebAssembly: {0}")]
    Invalid(String),
    /// Over one of the complexity caps applied before compiling.
    #[error("the module has {count} {what}, over the limit of {limit}")]
    TooComplex {
        /// What was counted.
        what: String,
        /// How many.
        count: u64,
        /// The limit.
        limit: u64,
    },
    /// An import outside the ABI.
    #[error(
        "forbidden import `{module}::{name}` ({kind}): modules may only import the `turnstile` functions (and the WASI functions listed in the README)"
    )]
    ForbiddenImport {
        /// Import module.
        module: String,
        /// Import name.
        name: String,
        /// What kind of item.
        kind: &'static str,
    },
    /// An ABI import with the wrong signature.
    #[error("import `{name}` has signature {found}, the ABI says {expected}")]
    ImportSignature {
        /// The import, `module::name`.
        name: String,
        /// The ABI's signature.
        expected: String,
        /// The module's.
        found: String,
    },
    /// An exported function that would be an action but is not `() -> i32`.
    #[error(
        "export `{name}` looks like an action but has signature {found}; actions are `() -> i32` (prefix helpers with `_` or `turnstile_`, or don't export them)"
    )]
    ActionSignature {
        /// The export.
        name: String,
        /// Its signature.
        found: String,
    },
    /// No exported action at all.
    #[error("the module exports no actions (exported functions `() -> i32`)")]
    NoActions,
    /// No exported `memory`.
    #[error("the module does not export its memory as `memory`")]
    NoMemory,
    /// A memory bigger than allowed.
    #[error("memory {which} is {bytes} bytes, over the limit of {limit}")]
    MemoryTooLarge {
        /// `minimum` or `maximum`.
        which: &'static str,
        /// Its size.
        bytes: u64,
        /// The limit.
        limit: u64,
    },
    /// A table bigger than allowed.
    #[error("table {which} is {elements} elements, over the limit of {limit}")]
    TableTooLarge {
        /// `minimum` or `maximum`.
        which: &'static str,
        /// Its size.
        elements: u64,
        /// The limit.
        limit: u64,
    },
    /// wasmtime refused to compile or link it.
    #[error("compiling failed: {0}")]
    Compile(String),
    /// Compiling it took longer than the host allows (these bytes are refused from now on).
    #[error(
        "compiling took longer than {seconds} s, the host's limit: make its largest functions smaller (fewer locals live across fewer branches)"
    )]
    CompileTimeout {
        /// The limit.
        seconds: u64,
    },
    /// Every compile slot stayed busy for as long as a compile may take.
    #[error("every compile slot is busy: try again shortly")]
    CompileBusy,
    /// The compile ran past the time limit without having had that much CPU: the host is busy
    /// with actions, which come first. It goes on in the background.
    #[error(
        "the host is busy running actions, which come before compiles: this module's compile goes on in the background; deploy it again shortly"
    )]
    CompileDelayed,
    /// The tenant's previous module is still compiling (it ran out of compile time, or was held
    /// back by a busy host): a tenant holds one compile at a time.
    #[error(
        "your previous module is still compiling (it ran out of compile time, or the host is busy): deploy again when it is done (a few seconds)"
    )]
    CompileRunning,
}

impl DeployError {
    /// A stable snake_case code for this refusal.
    pub fn code(&self) -> &'static str {
        match self {
            DeployError::TooLarge { .. } => "module_too_large",
            DeployError::NotWasm => "not_wasm",
            DeployError::Component => "component_not_supported",
            DeployError::Invalid(_) => "invalid_wasm",
            DeployError::TooComplex { .. } => "module_too_complex",
            DeployError::ForbiddenImport { .. } => "forbidden_import",
            DeployError::ImportSignature { .. } => "import_signature",
            DeployError::ActionSignature { .. } => "action_signature",
            DeployError::NoActions => "no_actions",
            DeployError::NoMemory => "no_memory",
            DeployError::MemoryTooLarge { .. } => "memory_too_large",
            DeployError::TableTooLarge { .. } => "table_too_large",
            DeployError::Compile(_) => "compile_failed",
            DeployError::CompileTimeout { .. } => "compile_timeout",
            DeployError::CompileBusy => "compile_busy",
            DeployError::CompileDelayed => "compile_delayed",
            DeployError::CompileRunning => "compile_running",
        }
    }
}

/// One import of a module.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImportInfo {
    /// Import module.
    pub module: String,
    /// Import name.
    pub name: String,
    /// Its type, e.g. `func (i32, i32) -> ()`.
    pub ty: String,
}

/// A memory or table's declared size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Extent {
    /// Minimum (bytes for a memory, elements for a table).
    pub min: u64,
    /// Declared maximum, if any.
    pub max: Option<u64>,
}

/// What deploy found in a module: what `turnstile inspect` prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModuleInfo {
    /// sha-256 of the bytes, hex: the app version.
    pub hash: String,
    /// Size in bytes.
    pub size: usize,
    /// Its imports.
    pub imports: Vec<ImportInfo>,
    /// Its actions, sorted.
    pub actions: Vec<String>,
    /// Its memory.
    pub memory: Extent,
    /// Its table, if it has one.
    pub table: Option<Extent>,
    /// Whether it was built for `wasm32-wasip1` (imports WASI).
    pub wasi: bool,
    /// Functions it defines.
    pub functions: u32,
}

/// sha-256 of `bytes`, as lowercase hex.
pub fn module_hash(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// `bytes` as lowercase hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    let mut hex = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        let _ = write!(hex, "{byte:02x}");
    }
    hex
}

fn signature<P: ToString, R: ToString>(params: &[P], results: &[R]) -> String {
    fn list<T: ToString>(items: &[T]) -> String {
        items.iter().map(ToString::to_string).collect::<Vec<String>>().join(", ")
    }
    format!("({}) -> ({})", list(params), list(results))
}

fn features() -> WasmFeatures {
    let mut features = WasmFeatures::default();
    for off in [
        WasmFeatures::THREADS,
        WasmFeatures::SHARED_EVERYTHING_THREADS,
        WasmFeatures::GC,
        WasmFeatures::MEMORY64,
        WasmFeatures::CUSTOM_PAGE_SIZES,
        WasmFeatures::STACK_SWITCHING,
        WasmFeatures::EXCEPTIONS,
        WasmFeatures::LEGACY_EXCEPTIONS,
        WasmFeatures::COMPONENT_MODEL,
    ] {
        features.remove(off);
    }
    features
}

/// Validates a module and reports what it holds, or the first reason to refuse it. Compiles
/// nothing.
pub fn inspect(bytes: &[u8], limits: &DeployLimits) -> Result<ModuleInfo, DeployError> {
    if bytes.len() > limits.max_module_bytes {
        return Err(DeployError::TooLarge { size: bytes.len(), limit: limits.max_module_bytes });
    }
    if !bytes.starts_with(b"\0asm") {
        return Err(DeployError::NotWasm);
    }
    let invalid = |e: wasmparser::BinaryReaderError| DeployError::Invalid(e.to_string());
    let too_complex = |what: &str, count: u64, limit: u64| -> Result<(), DeployError> {
        if count > limit { Err(DeployError::TooComplex { what: what.to_owned(), count, limit }) } else { Ok(()) }
    };
    let mut validator = Validator::new_with_features(features());
    let mut imports = Vec::new();
    let mut exports: Vec<(String, u32)> = Vec::new();
    let mut has_memory_export = false;
    let mut memory = None;
    let mut table = None;
    let mut functions = 0;
    let mut code_bytes = 0u64;
    let mut compile_cost_total = 0u64;
    let mut types = None;
    for payload in Parser::new(0).parse_all(bytes) {
        let payload = payload.map_err(invalid)?;
        if let Payload::Version { encoding: Encoding::Component, .. } = payload {
            return Err(DeployError::Component);
        }
        match &payload {
            Payload::FunctionSection(section) => {
                functions = section.count();
                too_complex("functions", u64::from(functions), u64::from(limits.max_functions))?;
            }
            Payload::DataSection(section) => {
                too_complex("data segments", u64::from(section.count()), u64::from(limits.max_data_segments))?;
            }
            Payload::CodeSectionEntry(body) => {
                let size = u64::try_from(body.range().len()).unwrap_or(u64::MAX);
                let limit = u64::try_from(limits.max_function_body_bytes).unwrap_or(u64::MAX);
                too_complex("bytes in one function body", size, limit)?;
                let mut locals = 0u64;
                for local in body.get_locals_reader().map_err(invalid)? {
                    locals += u64::from(local.map_err(invalid)?.0);
                }
                too_complex("locals in one function", locals, u64::from(limits.max_locals))?;
                code_bytes += size;
                too_complex("bytes of code", code_bytes, u64::try_from(limits.max_code_bytes).unwrap_or(u64::MAX))?;
            }
            Payload::ImportSection(section) => {
                for import in section.clone().into_imports() {
                    let import = import.map_err(invalid)?;
                    imports.push((import.module.to_owned(), import.name.to_owned(), import.ty));
                }
            }
            Payload::ExportSection(section) => {
                for export in section.clone() {
                    let export = export.map_err(invalid)?;
                    match export.kind {
                        ExternalKind::Func => exports.push((export.name.to_owned(), export.index)),
                        ExternalKind::Memory if export.name == "memory" => has_memory_export = true,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
        match validator.payload(&payload).map_err(invalid)? {
            ValidPayload::Func(func, body) => {
                let mut func = func.into_validator(Default::default());
                let cost = validate_costing(&mut func, &body).map_err(invalid)?;
                let what = "units of compile cost (values live × branches)";
                too_complex(&format!("{what} in one function"), cost, limits.max_function_cost)?;
                compile_cost_total = compile_cost_total.saturating_add(cost);
                too_complex(&format!("{what} in all"), compile_cost_total, limits.max_module_cost)?;
            }
            ValidPayload::End(end) => types = Some(end),
            _ => {}
        }
    }
    let Some(types) = types else {
        return Err(DeployError::Invalid("the module ends early".into()));
    };
    let types = types.as_ref();

    let mut import_info = Vec::new();
    let mut wasi = false;
    for (module, name, ty) in imports {
        let TypeRef::Func(type_index) = ty else {
            let kind = match ty {
                TypeRef::Memory(_) => "memory",
                TypeRef::Table(_) => "table",
                TypeRef::Global(_) => "global",
                _ => "tag",
            };
            return Err(DeployError::ForbiddenImport { module, name, kind });
        };
        let func = types[types.core_type_at_in_module(type_index)].unwrap_func();
        let found = signature(func.params(), func.results());
        let (table, unknown) = if module == abi::MODULE {
            (abi::IMPORTS, "function not in the ABI")
        } else if module == abi::WASI_MODULE {
            wasi = true;
            (abi::WASI_IMPORTS, "WASI function scripts may not use: they have no files, sockets or processes")
        } else {
            return Err(DeployError::ForbiddenImport { module, name, kind: "function" });
        };
        let Some((_, params, results)) = table.iter().find(|(n, _, _)| *n == name) else {
            return Err(DeployError::ForbiddenImport { module, name, kind: unknown });
        };
        let expected = signature(params, results);
        if expected != found {
            return Err(DeployError::ImportSignature { name: format!("{module}::{name}"), expected, found });
        }
        import_info.push(ImportInfo { module, name, ty: format!("func {found}") });
    }

    let mut actions = Vec::new();
    for (name, index) in exports {
        if name.starts_with('_') || name.starts_with("turnstile_") {
            continue;
        }
        let func = types[types.core_function_at(index)].unwrap_func();
        if !func.params().is_empty() || func.results() != [wasmparser::ValType::I32] {
            return Err(DeployError::ActionSignature { name, found: signature(func.params(), func.results()) });
        }
        actions.push(name);
    }
    actions.sort();
    if actions.is_empty() {
        return Err(DeployError::NoActions);
    }
    if !has_memory_export {
        return Err(DeployError::NoMemory);
    }
    if types.memory_count() > 0 {
        let ty = types.memory_at(0);
        let extent = Extent { min: ty.initial.saturating_mul(PAGE), max: ty.maximum.map(|m| m.saturating_mul(PAGE)) };
        for (which, bytes) in [("minimum", Some(extent.min)), ("maximum", extent.max)] {
            if let Some(bytes) = bytes.filter(|b| *b > limits.max_memory_bytes) {
                return Err(DeployError::MemoryTooLarge { which, bytes, limit: limits.max_memory_bytes });
            }
        }
        memory = Some(extent);
    }
    if types.table_count() > 0 {
        let ty = types.table_at(0);
        let extent = Extent { min: ty.initial, max: ty.maximum };
        for (which, elements) in [("minimum", Some(extent.min)), ("maximum", extent.max)] {
            if let Some(elements) = elements.filter(|e| *e > limits.max_table_elements) {
                return Err(DeployError::TableTooLarge { which, elements, limit: limits.max_table_elements });
            }
        }
        table = Some(extent);
    }
    let Some(memory) = memory else {
        return Err(DeployError::NoMemory);
    };
    Ok(ModuleInfo {
        hash: module_hash(bytes),
        size: bytes.len(),
        imports: import_info,
        actions,
        memory,
        table,
        wasi,
        functions,
    })
}

/// Validates a function body, operator by operator, and returns an upper bound on how hard it
/// is to compile: the values that can be live at once (parameters, locals and the deepest operand
/// stack, block parameters included) times the places where control can branch. Register
/// allocation tracks every live value across every block, so a function with thousands of values
/// live across thousands of branches takes time quadratic in its size (4 000 locals updated under
/// 4 000 `if`s — 72 KB — took 12 s here; so did parameters in place of the locals); capping this
/// product keeps compile time linear in the bytes.
fn validate_costing(
    func: &mut wasmparser::FuncValidator<wasmparser::ValidatorResources>,
    body: &wasmparser::FunctionBody<'_>,
) -> Result<u64, wasmparser::BinaryReaderError> {
    use wasmparser::Operator;
    let mut reader = body.get_binary_reader();
    func.read_locals(&mut reader)?;
    let mut operators = wasmparser::OperatorsReader::new(reader);
    let (mut branches, mut deepest) = (1u64, 0u32);
    while !operators.eof() {
        let offset = operators.original_position();
        let operator = operators.read()?;
        // Branches in the wasm, and the operators the compiler turns into blocks of its own
        // (checks and lazy initialisation around indirect calls and table accesses): 16 000
        // values live across 16 000 `call_indirect`s, with no wasm branch at all, took the
        // compiler past 26 GB (red-team helper 16).
        if matches!(
            operator,
            Operator::Block { .. }
                | Operator::Loop { .. }
                | Operator::If { .. }
                | Operator::Else
                | Operator::Br { .. }
                | Operator::BrIf { .. }
                | Operator::BrTable { .. }
                | Operator::BrOnNull { .. }
                | Operator::BrOnNonNull { .. }
                | Operator::BrOnCast { .. }
                | Operator::BrOnCastFail { .. }
                | Operator::CallIndirect { .. }
                | Operator::ReturnCallIndirect { .. }
                | Operator::CallRef { .. }
                | Operator::ReturnCallRef { .. }
                | Operator::TableGet { .. }
                | Operator::TableSet { .. }
                | Operator::TableGrow { .. }
                | Operator::TableFill { .. }
                | Operator::TableCopy { .. }
                | Operator::TableInit { .. }
        ) {
            branches += 1;
        }
        func.op(offset, &operator)?;
        deepest = deepest.max(func.operand_stack_height());
    }
    let end = operators.original_position();
    operators.get_binary_reader().finish_expression(&func.visitor(end))?;
    let live = u64::from(func.len_locals()) + u64::from(deepest);
    Ok(branches.saturating_mul(live.max(1)))
}

/// A deployed app version: validated, compiled, ready to instantiate (linked both for
/// synchronous runs and for preemptible tasks).
pub struct App {
    info: ModuleInfo,
    actions: Arc<HashSet<String>>,
    exports: HashMap<String, ModuleExport>,
    error_action: Option<String>,
    pre_sync: InstancePre<ActionCtx>,
    pre_task: InstancePre<ActionCtx>,
    /// Its actions have run long lately: start them as tasks rather than try them in one slice.
    long: AtomicBool,
    /// Actions in a row that fitted in one slice since it was marked long.
    short_streak: AtomicU32,
}

/// Actions in a row that must fit in one slice before a long app is tried synchronously again.
const SHORT_STREAK: u32 = 64;

impl App {
    /// Compiles a module that [`inspect`] accepted (a cache hit when these bytes were compiled
    /// before by an engine of the same configuration) and links it both ways.
    pub(crate) fn compile(
        engine: &wasmtime::Engine,
        linkers: [&Linker<ActionCtx>; 2],
        bytes: &[u8],
        info: ModuleInfo,
    ) -> Result<App, DeployError> {
        let compile_failed = |e: wasmtime::Error| DeployError::Compile(e.to_string());
        let module = Module::new(engine, bytes).map_err(compile_failed)?;
        let pre_sync = linkers[0].instantiate_pre(&module).map_err(compile_failed)?;
        let pre_task = linkers[1].instantiate_pre(&module).map_err(compile_failed)?;
        let mut exports = HashMap::new();
        for name in &info.actions {
            let export = module
                .get_export_index(name)
                .ok_or_else(|| DeployError::Compile(format!("export `{name}` vanished")))?;
            exports.insert(name.clone(), export);
        }
        let actions: HashSet<String> = info.actions.iter().cloned().collect();
        let error_action = actions.get(ERROR_ACTION).cloned();
        Ok(App {
            info,
            actions: Arc::new(actions),
            exports,
            error_action,
            pre_sync,
            pre_task,
            long: AtomicBool::new(false),
            short_streak: AtomicU32::new(0),
        })
    }

    /// The app version: sha-256 of the module, hex.
    pub fn hash(&self) -> &str {
        &self.info.hash
    }

    /// What deploy found in the module.
    pub fn info(&self) -> &ModuleInfo {
        &self.info
    }

    /// The app's error action, when it exports [`ERROR_ACTION`].
    pub fn error_action(&self) -> Option<&str> {
        self.error_action.as_deref()
    }

    /// Ok when `name` is one of the app's actions.
    pub fn check_action(&self, name: &str) -> Result<(), Error> {
        if self.actions.contains(name) {
            Ok(())
        } else {
            Err(Error::UnknownAction { name: name.to_owned(), available: self.info.actions.join(", ") })
        }
    }

    pub(crate) fn action_names(&self) -> &Arc<HashSet<String>> {
        &self.actions
    }

    pub(crate) fn export(&self, action: &str) -> Option<&ModuleExport> {
        self.exports.get(action)
    }

    /// The module, linked for a synchronous run or for a task.
    pub(crate) fn pre(&self, linking: Linking) -> &InstancePre<ActionCtx> {
        match linking {
            Linking::Sync => &self.pre_sync,
            Linking::Task => &self.pre_task,
        }
    }

    /// Whether its next action should start as a task (its actions have run long lately).
    pub(crate) fn runs_long(&self) -> bool {
        self.long.load(Ordering::Relaxed)
    }

    /// One of its actions needed more than a slice.
    pub(crate) fn ran_long(&self) {
        self.short_streak.store(0, Ordering::Relaxed);
        self.long.store(true, Ordering::Relaxed);
    }

    /// One of its actions, started as a task, fitted in one slice after all.
    pub(crate) fn ran_short(&self) {
        if self.short_streak.fetch_add(1, Ordering::Relaxed) + 1 >= SHORT_STREAK {
            self.long.store(false, Ordering::Relaxed);
        }
    }
}
