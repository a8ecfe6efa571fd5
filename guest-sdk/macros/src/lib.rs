//! The `#[action]` attribute of the Turnstile guest SDK. Use it through `turnstile_sdk::action`;
//! the SDK's documentation describes what it generates and the mistakes it rejects.

use proc_macro::TokenStream;
use proc_macro2::Span;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{FnArg, ItemFn, ReturnType};

/// Turns `fn name(ctx: &mut Ctx<S>) -> Next` into a Turnstile action exported as `name`.
///
/// The function is kept as written (it can still be called, e.g. from native unit tests); next
/// to it the attribute adds an exported `extern "C" fn() -> i32` named after it that runs it
/// through the SDK's runner. Misuse (arguments to the attribute, `async`, generics, a `self`
/// receiver, other than one parameter, no return type) is a compile error at the offending code.
#[proc_macro_attribute]
pub fn action(attr: TokenStream, item: TokenStream) -> TokenStream {
    let attr = proc_macro2::TokenStream::from(attr);
    let func = match syn::parse::<ItemFn>(item) {
        Ok(func) => func,
        Err(e) => return e.to_compile_error().into(),
    };
    match expand(attr, &func) {
        Ok(tokens) => tokens.into(),
        Err(e) => {
            // Keep the user's function so the one error is not buried under "cannot find" noise.
            let error = e.to_compile_error();
            quote!(#error #func).into()
        }
    }
}

fn expand(attr: proc_macro2::TokenStream, func: &ItemFn) -> syn::Result<proc_macro2::TokenStream> {
    if !attr.is_empty() {
        return Err(syn::Error::new(
            attr.span(),
            "#[action] takes no arguments; the export is named after the function",
        ));
    }
    let sig = &func.sig;
    if let Some(token) = &sig.asyncness {
        return Err(syn::Error::new(
            token.span,
            "an #[action] cannot be `async`: actions run to completion in one call",
        ));
    }
    if let Some(token) = &sig.constness {
        return Err(syn::Error::new(token.span, "an #[action] cannot be `const`"));
    }
    if let Some(token) = &sig.unsafety {
        return Err(syn::Error::new(token.span, "an #[action] cannot be `unsafe`"));
    }
    if let Some(abi) = &sig.abi {
        return Err(syn::Error::new(
            abi.span(),
            "an #[action] is a plain Rust fn; the attribute adds the `extern \"C\"` export",
        ));
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        return Err(syn::Error::new(
            sig.generics.span(),
            "an #[action] cannot be generic: name the state type, e.g. `Ctx<MyState>`",
        ));
    }
    if let Some(variadic) = &sig.variadic {
        return Err(syn::Error::new(variadic.span(), "an #[action] cannot be variadic"));
    }
    if let Some(FnArg::Receiver(receiver)) = sig.inputs.first() {
        return Err(syn::Error::new(receiver.span(), "an #[action] is a free fn, not a method: remove `self`"));
    }
    if sig.inputs.len() != 1 {
        let span = if sig.inputs.is_empty() { sig.paren_token.span.join() } else { sig.inputs.span() };
        return Err(syn::Error::new(
            span,
            format!("an #[action] takes exactly one parameter, `ctx: &mut Ctx<S>`; found {}", sig.inputs.len()),
        ));
    }
    if let ReturnType::Default = sig.output {
        return Err(syn::Error::new(sig.paren_token.span.close(), "an #[action] must return `Next` (`-> Next`)"));
    }
    let name = &sig.ident;
    let export = name.to_string();
    let export = export.strip_prefix("r#").unwrap_or(&export);
    if export.starts_with('_') || export.starts_with("turnstile_") {
        return Err(syn::Error::new(
            name.span(),
            "the host ignores exports starting with `_` or `turnstile_`: rename this action",
        ));
    }
    let shim = syn::Ident::new(&format!("__turnstile_action_{export}"), Span::call_site());
    // Spanned at the function's name, so a wrong parameter or return type is reported there.
    let call = quote_spanned! {name.span()=> ::turnstile_sdk::__private::run(#export, #name) };
    Ok(quote! {
        #func

        const _: () = {
            // Exported only when built to Wasm: natively (unit tests, clippy) the shim is just
            // type-checked, and `allow(dead_code)` keeps the action from being reported unused.
            #[doc(hidden)]
            #[allow(unsafe_code, dead_code)]
            #[cfg_attr(target_arch = "wasm32", unsafe(export_name = #export))]
            extern "C" fn #shim() -> i32 {
                #call
            }
        };
    })
}
