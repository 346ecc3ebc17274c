/**
 * Views are only valid when a `to…View` builder made them: builders seal (deep-freeze and
 * register) what they return, and render functions refuse anything else. A hand-assembled
 * object therefore cannot skip validation on its way into a template.
 */
const SEALED = new WeakSet<object>();

function deepFreeze<T>(value: T): T {
  if (value !== null && typeof value === "object" && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const child of Object.values(value)) deepFreeze(child);
  }
  return value;
}

export function seal<T extends object>(view: T): T {
  SEALED.add(deepFreeze(view));
  return view;
}

export function assertSealed(view: object, builder: string): void {
  if (!SEALED.has(view)) {
    throw new TypeError(`render: pass a view built by ${builder}(); hand-made views are not validated`);
  }
}
