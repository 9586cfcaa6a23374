// Dialogs for what cannot be undone (deleting a run or a project, moving a run): a modal
// <dialog> that names what will happen and, for deletions, keeps its button disabled until
// the reader types the name (GitHub's and W&B's way), so a stray click deletes nothing.

import { type Child, errorBox, h } from "./dom";

export interface DangerOptions {
  title: string;
  /** What will happen, in words. */
  body: Child;
  /** The button's label ("Delete run"). */
  action: string;
  /** When set, the text to type before the button works (a run's or project's name). */
  typed?: string;
  /** More inputs (the target project of a move), placed above the typed confirmation. */
  fields?: HTMLElement;
  /** Does the thing; its failure is shown in the dialog, which stays open. */
  run: () => Promise<void>;
}

/** Opens the dialog; resolves true once `run` succeeded (the dialog is closed), false if cancelled. */
export function dangerDialog(opts: DangerOptions): Promise<boolean> {
  return new Promise((resolve) => {
    const status = h("div.danger-status");
    const go = h("button.danger", { type: "button", disabled: opts.typed !== undefined }, opts.action);
    const typed = opts.typed === undefined ? null
      : h("input.confirm-name", { type: "text", autocomplete: "off", spellcheck: "false", size: 30, name: "confirm-name",
        "aria-label": `type ${opts.typed} to confirm` });
    typed?.addEventListener("input", () => { go.disabled = typed.value !== opts.typed; });
    const cancel = h("button", { type: "button" }, "Cancel");
    const dialog = h("dialog.danger-dialog", null,
      h("h3", null, opts.title),
      h("div.danger-body", null, opts.body),
      opts.fields ?? null,
      typed ? h("label.block", null, "Type ", h("code", null, opts.typed), " to confirm: ", typed) : null,
      status,
      h("div.row", null, go, cancel));
    let done = false;
    const finish = (ok: boolean) => {
      if (done) return;
      done = true;
      if (dialog.open) dialog.close();
      dialog.remove();
      resolve(ok);
    };
    cancel.addEventListener("click", () => finish(false));
    dialog.addEventListener("close", () => finish(false)); // Escape
    go.addEventListener("click", async () => {
      go.disabled = true;
      status.replaceChildren(h("span.muted", null, "working…"));
      try {
        await opts.run();
        finish(true);
      } catch (err) {
        status.replaceChildren(errorBox(err));
        go.disabled = typed !== null && typed.value !== opts.typed;
      }
    });
    // Enter in a field does what the button does, once it works (never Cancel's way round).
    dialog.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && event.target instanceof HTMLInputElement) {
        event.preventDefault();
        if (!go.disabled) go.click();
      }
    });
    document.body.appendChild(dialog);
    dialog.showModal();
    (typed ?? go).focus();
  });
}
