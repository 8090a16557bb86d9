"""The wire contract between the control plane and the host agent: `hostagent.proto` (its code generated in
`_generated/`) and `limits`, the constants both sides check."""
