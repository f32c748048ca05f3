//! Which picked values a template could read, from minijinja's own parse of
//! the text (comments, raw blocks and string literals are not reads), so
//! that a value that cannot be read this time holds the templated keys only
//! when a template could have used it.
//!
//! Only two things give a template a value: a bare name that is a key
//! (`{{ PASSWORD }}`) and the map `values`. Everything else a template
//! holds (a `{% set %}` or loop variable, a `namespace`) was built from
//! expressions this walk also reads, so tracking those two is enough.
//! `values.KEY`, `values["KEY"]` and `values['KEY']` read that key; any other
//! use of `values` (a filter, a loop, a computed subscript, a method call,
//! an alias) could read every value. A name shadowed by a local still counts
//! as a read of the key of that name: that holds too much, never too little.

use std::collections::{BTreeMap, BTreeSet};
use std::panic::{AssertUnwindSafe, catch_unwind};

use minijinja::machinery::ast::{CallArg, Expr, Stmt};
use minijinja::value::Value;

use super::{MAX_TEMPLATE_BYTES, TEMPLATE_STACK_BYTES};

/// The picked values a template could read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dependencies {
    /// Any of them: the template uses `values` as a whole (or with a
    /// computed key), or it could not be parsed.
    All,
    /// Only the values under these keys. Some may be no key at all (a
    /// function such as `range`, a local variable): only keys matter.
    Keys(BTreeSet<String>),
}

impl Dependencies {
    /// Could the template read the value under `key`?
    pub fn reads(&self, key: &str) -> bool {
        match self {
            Self::All => true,
            Self::Keys(keys) => keys.contains(key),
        }
    }
}

/// The values one template could read (see the module documentation of
/// [`crate::template`], "When a value cannot be read").
pub fn dependencies(template_text: &str) -> Dependencies {
    analyse(&[template_text])
}

/// The values any of the templates (Secret key → template text) could read.
pub fn dependencies_of(templates: &BTreeMap<String, String>) -> Dependencies {
    let texts: Vec<&str> = templates.values().map(String::as_str).collect();
    analyse(&texts)
}

/// Parses and walks on a thread with the renderer's large stack: a
/// 16 KiB filter chain or `1 - 1 - …` is a tree thousands deep, and both
/// the walk and dropping the tree recurse. Anything that goes wrong is
/// [`Dependencies::All`]: holding too much keeps the last good data.
fn analyse(texts: &[&str]) -> Dependencies {
    if texts.iter().any(|text| text.len() > MAX_TEMPLATE_BYTES) {
        // Refused when rendered anyway.
        return Dependencies::All;
    }
    if texts.is_empty() {
        return Dependencies::Keys(BTreeSet::new());
    }
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("kvsync-template-deps".to_owned())
            .stack_size(TEMPLATE_STACK_BYTES)
            .spawn_scoped(scope, || {
                catch_unwind(AssertUnwindSafe(|| {
                    let mut reads = Reads::default();
                    for text in texts {
                        reads.template(text);
                    }
                    reads.into_dependencies()
                }))
                .unwrap_or(Dependencies::All)
            })
            .ok()
            .and_then(|worker| worker.join().ok())
            .unwrap_or(Dependencies::All)
    })
}

/// What the walk found so far.
#[derive(Default)]
struct Reads {
    all: bool,
    keys: BTreeSet<String>,
}

/// The name under which every value is reachable.
const VALUES: &str = "values";

fn is_values(expr: &Expr<'_>) -> bool {
    matches!(expr, Expr::Var(var) if var.id == VALUES)
}

impl Reads {
    fn into_dependencies(self) -> Dependencies {
        if self.all {
            Dependencies::All
        } else {
            Dependencies::Keys(self.keys)
        }
    }

    fn template(&mut self, text: &str) {
        let syntax = minijinja::syntax::SyntaxConfig::default();
        match minijinja::machinery::parse(text, "template", syntax) {
            Ok(stmt) => self.stmt(&stmt),
            // It fails rendering too; until it is fixed, hold.
            Err(_) => self.all = true,
        }
    }

    fn stmts(&mut self, stmts: &[Stmt<'_>]) {
        for stmt in stmts {
            self.stmt(stmt);
        }
    }

    fn stmt(&mut self, stmt: &Stmt<'_>) {
        if self.all {
            return;
        }
        match stmt {
            Stmt::Template(t) => self.stmts(&t.children),
            Stmt::EmitExpr(e) => self.expr(&e.expr),
            Stmt::EmitRaw(_) => {}
            Stmt::ForLoop(f) => {
                self.target(&f.target);
                self.expr(&f.iter);
                if let Some(filter) = &f.filter_expr {
                    self.expr(filter);
                }
                self.stmts(&f.body);
                self.stmts(&f.else_body);
            }
            Stmt::IfCond(i) => {
                self.expr(&i.expr);
                self.stmts(&i.true_body);
                self.stmts(&i.false_body);
            }
            Stmt::WithBlock(w) => {
                for (target, expr) in &w.assignments {
                    self.target(target);
                    self.expr(expr);
                }
                self.stmts(&w.body);
            }
            Stmt::Set(s) => {
                self.target(&s.target);
                self.expr(&s.expr);
            }
            Stmt::SetBlock(s) => {
                self.target(&s.target);
                if let Some(filter) = &s.filter {
                    self.expr(filter);
                }
                self.stmts(&s.body);
            }
            Stmt::AutoEscape(a) => {
                self.expr(&a.enabled);
                self.stmts(&a.body);
            }
            Stmt::FilterBlock(f) => {
                self.expr(&f.filter);
                self.stmts(&f.body);
            }
            Stmt::Do(d) => self.call(&d.call.expr, &d.call.args),
            // What this build of minijinja does not parse (macros, blocks,
            // includes, loop controls) but a feature could turn on: unknown
            // here, so everything.
            #[allow(unreachable_patterns)]
            _ => self.all = true,
        }
    }

    /// Where a `set`, `for` or `with` assigns: a name there is written, not
    /// read.
    fn target(&mut self, expr: &Expr<'_>) {
        match expr {
            Expr::Var(_) => {}
            Expr::Tuple(t) => t.items.iter().for_each(|item| self.target(item)),
            Expr::List(l) => l.items.iter().for_each(|item| self.target(item)),
            // `ns.attr`: reads `ns`.
            other => self.expr(other),
        }
    }

    fn args(&mut self, args: &[CallArg<'_>]) {
        for arg in args {
            match arg {
                CallArg::Pos(e)
                | CallArg::Kwarg(_, e)
                | CallArg::PosSplat(e)
                | CallArg::KwargSplat(e) => self.expr(e),
            }
        }
    }

    fn call(&mut self, callee: &Expr<'_>, args: &[CallArg<'_>]) {
        match callee {
            // `values.items()`, `values.get(…)`: a method of the whole map.
            Expr::GetAttr(attr) if is_values(&attr.expr) => self.all = true,
            other => self.expr(other),
        }
        self.args(args);
    }

    fn expr(&mut self, expr: &Expr<'_>) {
        if self.all {
            return;
        }
        match expr {
            Expr::Var(var) if var.id == VALUES => self.all = true,
            Expr::Var(var) => {
                self.keys.insert(var.id.to_owned());
            }
            Expr::Const(_) => {}
            Expr::GetAttr(attr) if is_values(&attr.expr) => {
                self.keys.insert(attr.name.to_owned());
            }
            Expr::GetAttr(attr) => self.expr(&attr.expr),
            Expr::GetItem(item) if is_values(&item.expr) => {
                // A literal key (folded as the compiler folds it); any
                // other subscript is computed while rendering.
                let subscript = item.subscript_expr.as_const();
                match subscript.as_ref().and_then(Value::as_str) {
                    Some(key) => {
                        self.keys.insert(key.to_owned());
                    }
                    None => self.all = true,
                }
            }
            Expr::GetItem(item) => {
                self.expr(&item.expr);
                self.expr(&item.subscript_expr);
            }
            Expr::Slice(s) => {
                self.expr(&s.expr);
                for part in [&s.start, &s.stop, &s.step].into_iter().flatten() {
                    self.expr(part);
                }
            }
            Expr::UnaryOp(u) => self.expr(&u.expr),
            Expr::BinOp(b) => {
                self.expr(&b.left);
                self.expr(&b.right);
            }
            Expr::Compare(c) => {
                self.expr(&c.expr);
                for op in &c.ops {
                    self.expr(&op.expr);
                }
            }
            Expr::IfExpr(i) => {
                self.expr(&i.test_expr);
                self.expr(&i.true_expr);
                if let Some(otherwise) = &i.false_expr {
                    self.expr(otherwise);
                }
            }
            Expr::Filter(f) => {
                if let Some(input) = &f.expr {
                    self.expr(input);
                }
                self.args(&f.args);
            }
            Expr::Test(t) => {
                self.expr(&t.expr);
                self.args(&t.args);
            }
            Expr::Call(c) => self.call(&c.expr, &c.args),
            Expr::List(l) => l.items.iter().for_each(|item| self.expr(item)),
            Expr::Tuple(t) => t.items.iter().for_each(|item| self.expr(item)),
            Expr::Map(m) => m
                .keys
                .iter()
                .chain(&m.values)
                .for_each(|item| self.expr(item)),
        }
    }
}
