"""QA that runs the generated code: sandboxed checks, repair rounds, the critic's verdict."""
