// The client certificate the relay presents to the API (mutual TLS): a PEM
// certificate and key, or a PFX (PKCS#12) file, with an optional passphrase.
// The key, the PFX and the passphrase are write-only: left empty on an edited
// connection, the saved ones are kept.

import { h, show } from "./dom.js";
import { field, secretInput, select } from "./fields.js";

function pemArea(attrs = {}) {
  return h("textarea", { rows: "4", spellcheck: "false", class: "pem", ...attrs });
}

export function buildTlsFields({ editing }) {
  const keep = editing ? " Write-only: leave it empty to keep the saved one." : " Write-only.";
  const format = field("Client certificate", select([
    ["", "None"], ["pem", "PEM certificate and key"], ["pfx", "PFX / PKCS#12 file"],
  ]), { hint: "For APIs that ask the caller for a certificate (mutual TLS), through the agent too." });
  const certPem = field("Certificate (PEM)", pemArea(), {
    required: true, hint: "-----BEGIN CERTIFICATE----- … (the chain may follow).",
  });
  const keyPem = field("Private key (PEM)", pemArea({ autocomplete: "off" }), {
    required: !editing, hint: `The certificate's key.${keep}`,
  });
  const pfxFile = field("PFX file", h("input", { type: "file", accept: ".pfx,.p12" }), {
    required: !editing, hint: `A .pfx or .p12 file holding the certificate and its key.${keep}`,
  });
  const passphrase = field("Passphrase", secretInput(), {
    hint: `Only if the key or PFX file is encrypted.${keep}`,
  });
  let pfxBase64 = "";
  let saved = { keySet: false, pfxSet: false, passphraseSet: false, format: "" };

  pfxFile.control.addEventListener("change", () => {
    const file = pfxFile.control.files && pfxFile.control.files[0];
    pfxBase64 = "";
    if (!file) return;
    const reader = new FileReader();
    reader.addEventListener("load", () => {
      // "data:…;base64,XXXX": the part after the comma is the file in base64.
      pfxBase64 = String(reader.result).split(",", 2)[1] || "";
    });
    reader.readAsDataURL(file);
  });

  function sync() {
    const chosen = format.control.value;
    show(certPem.wrapper, chosen === "pem");
    show(keyPem.wrapper, chosen === "pem");
    show(pfxFile.wrapper, chosen === "pfx");
    show(passphrase.wrapper, chosen !== "");
  }
  format.control.addEventListener("change", sync);

  function placeholder(f, isSet) {
    f.control.placeholder = isSet ? "unchanged" : "";
  }

  return {
    wrappers: [format.wrapper, certPem.wrapper, keyPem.wrapper, pfxFile.wrapper,
      passphrase.wrapper],
    sync,
    fill(cert) {
      saved = {
        format: cert ? (cert.pfx_base64_set ? "pfx" : "pem") : "",
        keySet: Boolean(cert && cert.key_pem_set),
        pfxSet: Boolean(cert && cert.pfx_base64_set),
        passphraseSet: Boolean(cert && cert.passphrase_set),
      };
      format.control.value = saved.format;
      certPem.control.value = (cert && cert.cert_pem) || "";
      keyPem.control.value = "";
      placeholder(keyPem, saved.keySet);
      placeholder(passphrase, saved.passphraseSet);
      passphrase.control.value = "";
      pfxBase64 = "";
      sync();
    },
    /** http.tls.client_certificate for the document: an object, null (removed) or undefined (unchanged). */
    document() {
      const chosen = format.control.value;
      if (!chosen) return saved.format ? null : undefined;
      const cert = {};
      if (chosen === "pem") {
        cert.cert_pem = certPem.control.value.trim();
        if (keyPem.control.value) cert.key_pem = keyPem.control.value;
        if (saved.format === "pfx") cert.pfx_base64 = null;
      } else {
        if (pfxBase64) cert.pfx_base64 = pfxBase64;
        if (saved.format === "pem") {
          cert.cert_pem = null;
          cert.key_pem = null;
        }
      }
      if (passphrase.control.value) cert.passphrase = passphrase.control.value;
      return cert;
    },
    keepsSaved() {
      const chosen = format.control.value;
      return (chosen === "pem" && saved.keySet && !keyPem.control.value)
        || (chosen === "pfx" && saved.pfxSet && !pfxBase64)
        || (chosen !== "" && saved.passphraseSet && !passphrase.control.value);
    },
    errorTargets() {
      const base = "http.tls.client_certificate";
      return [[base, format], [`${base}.cert_pem`, certPem], [`${base}.key_pem`, keyPem],
        [`${base}.pfx_base64`, pfxFile], [`${base}.passphrase`, passphrase]];
    },
    forgetSecrets() {
      keyPem.control.value = "";
      passphrase.control.value = "";
      pfxFile.control.value = "";
      pfxBase64 = "";
    },
  };
}
