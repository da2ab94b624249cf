//! `crdgen`: prints every Keygate CustomResourceDefinition as YAML (one document each), the
//! text committed under `crds/` and shipped with the chart.

fn main() -> anyhow::Result<()> {
    print!("{}", operator::crds_yaml()?);
    Ok(())
}
