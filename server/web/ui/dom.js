// Building DOM nodes without innerHTML: every value lands as text, never as markup.

let counter = 0;

/** A page-unique id, e.g. uid("field") -> "field-7". */
export function uid(prefix) {
  counter += 1;
  return `${prefix}-${counter}`;
}

/**
 * h("button", {type: "button", onclick: fn}, "Save") -> <button type="button">Save</button>
 * Attributes that are null, undefined or false are left out; true gives an empty
 * attribute; "on…" keys add listeners. Children may be nodes, strings or arrays.
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2), value);
    } else if (key === "class") {
      el.className = value;
    } else if (key === "dataset") {
      Object.assign(el.dataset, value);
    } else {
      el.setAttribute(key, value === true ? "" : String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
}

/** Replace all children of *el*. */
export function replaceChildren(el, ...children) {
  el.replaceChildren();
  append(el, children);
}

/** Show or hide an element (the hidden attribute, so it leaves the tab order too). */
export function show(el, visible) {
  el.hidden = !visible;
}
