//! `fieldagent identity` and `fieldagent read`: the client ID the agent would use, and one read of
//! every sensor.

use std::io::Write;
use std::path::Path;

use crate::config;
use crate::error::Error;
use crate::identity;
use crate::sensors::Sensors;

/// `fieldagent identity`: prints e.g. `node-1 (from certificate CN of /etc/fieldagent/device.crt)`.
pub fn identity(path: &Path, out: &mut dyn Write, warn: &mut dyn Write) -> Result<(), Error> {
    let config = config::load_reporting(path, warn)?;
    let identity = identity::resolve(config.config())?;
    writeln!(out, "{identity}")?;
    Ok(())
}

/// `fieldagent read`: one pass over every sensor, as a table or one JSON object.
pub fn read(
    path: &Path,
    json: bool,
    out: &mut dyn Write,
    warn: &mut dyn Write,
) -> Result<(), Error> {
    let config = config::load_reporting(path, warn)?;
    let mut sensors = Sensors::new(&config.sensors, &config.config().sysfs_root);
    let sample =
        sensors.read_all_within(crate::sensors::DEADLINE, &crate::sensors::Stuck::default());
    if json {
        writeln!(out, "{}", sample.to_json())?;
        return Ok(());
    }
    let mut rows = vec![[
        "NAME".to_owned(),
        "VALUE".to_owned(),
        "UNIT".to_owned(),
        "SOURCE".to_owned(),
    ]];
    for sensor in sensors.iter() {
        for (index, name) in sensor.value_names().iter().enumerate() {
            let unit = sensor.unit(index).unwrap_or("-").to_owned();
            let row = match sample.values.iter().find(|(n, _)| n == name) {
                Some((_, value)) => [name.to_string(), value.to_string(), unit, sensor.describe()],
                None => {
                    let err = sample
                        .errors
                        .iter()
                        .find(|(n, _)| n == name)
                        .map_or_else(String::new, |(_, err)| err.to_string());
                    let described = sensor.describe();
                    // An error that names its source already is not prefixed twice.
                    let source = if err.starts_with(&described) {
                        err
                    } else {
                        format!("{described}: {err}")
                    };
                    [name.to_string(), "ERROR".to_owned(), unit, source]
                }
            };
            rows.push(row);
        }
    }
    let widths: Vec<usize> = (0..3)
        .map(|column| {
            rows.iter()
                .map(|row| row[column].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in &rows {
        writeln!(
            out,
            "{:<w0$}  {:>w1$}  {:<w2$}  {}",
            row[0],
            row[1],
            row[2],
            row[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2]
        )?;
    }
    if sensors.is_empty() {
        writeln!(out, "(no sensors configured)")?;
    }
    Ok(())
}
