//! `pysandbox image ...`: build, list, inspect, remove, prune, import, pull. Progress bars
//! (indicatif) on a terminal, nothing when stderr is not one.

use std::cell::RefCell;
use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};

use pysandbox::image::build::{BuildOptions, build};
use pysandbox::image::store::{Progress, Store};
use pysandbox::image::{archive, registry};

#[derive(Subcommand)]
pub enum ImageCommand {
    /// Build an image from a conda-style environment file (default: ./env.yaml).
    Build {
        /// The environment file.
        #[arg(value_name = "ENV.yaml", default_value = "env.yaml")]
        env: PathBuf,
        /// Image name (default: the file's stem, foo.yaml -> foo).
        #[arg(short = 't', long = "tag", value_name = "NAME")]
        name: Option<String>,
        /// Rebuild even if the environment file and the base did not change.
        #[arg(short = 'f', long = "force")]
        force: bool,
        /// Build on this store image instead of the default (host Python) image.
        #[arg(long, value_name = "IMAGE")]
        base: Option<String>,
        /// Let the build stage reach only these hosts (repeatable; as `run --allow-net`,
        /// e.g. pypi.org and files.pythonhosted.org) through pysandbox's proxy, which logs
        /// every connection on stderr, instead of the whole network.
        #[arg(long = "allow-net", value_name = "HOST[:PORT]")]
        allow_net: Vec<String>,
    },
    /// List the images in the store.
    Ls,
    /// Show an image: layers, sizes, packages, digests.
    Inspect {
        #[arg(value_name = "NAME")]
        name: String,
    },
    /// Remove an image's name (its blobs go with `prune`).
    Rm {
        #[arg(value_name = "NAME")]
        name: String,
    },
    /// Remove blobs and unpacked root file systems no image uses.
    Prune,
    /// Import an OCI layout directory, an OCI archive or a `docker save` archive.
    Import {
        #[arg(value_name = "PATH")]
        path: PathBuf,
        /// Name for an image that carries none.
        #[arg(short = 't', long = "tag", value_name = "NAME")]
        name: Option<String>,
    },
    /// Unpack an image's root file system into an empty directory (safely: no path in
    /// the image can write outside DEST).
    Unpack {
        #[arg(value_name = "NAME")]
        name: String,
        #[arg(value_name = "DEST")]
        dest: PathBuf,
    },
    /// Pull an image from an OCI registry (HTTPS; HTTP for loopback or --insecure).
    Pull {
        #[arg(value_name = "REF")]
        reference: String,
        /// Allow plain HTTP to a registry that is not on loopback.
        #[arg(long)]
        insecure: bool,
    },
}

/// indicatif progress on a terminal; silent otherwise.
pub struct Bars {
    tty: bool,
    bar: RefCell<Option<ProgressBar>>,
}

impl Bars {
    pub fn new() -> Bars {
        Bars {
            tty: std::io::stderr().is_terminal(),
            bar: RefCell::new(None),
        }
    }
}

impl Progress for Bars {
    fn start(&self, what: &str, total: Option<u64>) {
        if !self.tty {
            return;
        }
        let bar = match total {
            Some(t) => {
                let b = ProgressBar::new(t);
                b.set_style(
                    ProgressStyle::with_template(
                        "{msg:30} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
                    )
                    .expect("valid template")
                    .progress_chars("=> "),
                );
                b
            }
            None => {
                let b = ProgressBar::new_spinner();
                b.enable_steady_tick(std::time::Duration::from_millis(120));
                b
            }
        };
        bar.set_message(what.to_string());
        if let Some(old) = self.bar.replace(Some(bar)) {
            old.finish_and_clear();
        }
    }
    fn advance(&self, n: u64) {
        if let Some(b) = &*self.bar.borrow() {
            b.inc(n);
        }
    }
    fn finish(&self) {
        if let Some(b) = self.bar.replace(None) {
            b.finish_and_clear();
        }
    }
}

fn human(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

pub fn run(cmd: ImageCommand) -> Result<i32> {
    let bars = Bars::new();
    match cmd {
        ImageCommand::Build {
            env,
            name,
            force,
            base,
            allow_net,
        } => {
            for r in &allow_net {
                pysandbox::net::allow::AllowRule::parse(r)?;
            }
            let built = build(
                &BuildOptions {
                    env_file: env.clone(),
                    name,
                    force,
                    base,
                    allow_net,
                },
                &bars,
            )
            .with_context(|| format!("building {}", env.display()))?;
            if built.up_to_date {
                println!("{} is up to date ({})", built.name, built.digest);
            } else {
                println!("built {} ({})", built.name, built.digest);
                for p in &built.packages {
                    println!("  {p}");
                }
                if let Some(l) = &built.lock_file {
                    println!("lock file: {}", l.display());
                }
            }
        }
        ImageCommand::Ls => {
            let store = Store::open_default()?;
            let mut list = store.list()?;
            list.sort_by(|a, b| a.name.cmp(&b.name));
            println!("{:<40} {:<20} {:>10}", "NAME", "DIGEST", "SIZE");
            for i in list {
                let short = i.digest.trim_start_matches("sha256:");
                println!(
                    "{:<40} {:<20} {:>10}",
                    i.name,
                    &short[..short.len().min(12)],
                    human(i.size)
                );
            }
        }
        ImageCommand::Inspect { name } => {
            let store = Store::open_default()?;
            let d = store.inspect(&name)?;
            println!("{}", serde_json::to_string_pretty(&d)?);
        }
        ImageCommand::Rm { name } => {
            Store::open_default()?.remove(&name)?;
            println!("removed {name}");
        }
        ImageCommand::Prune => {
            let s = Store::open_default()?.prune()?;
            println!("{s}");
        }
        ImageCommand::Import { path, name } => {
            let store = Store::open_default()?;
            for (n, d) in archive::import(&store, &path, name.as_deref(), &bars)? {
                println!("imported {n} ({d})");
            }
        }
        ImageCommand::Unpack { name, dest } => {
            let store = Store::open_default()?;
            let digest = store
                .resolve(&name)?
                .with_context(|| format!("no image {name:?} in the store (pysandbox image ls)"))?;
            let stats = store.unpack_to(&digest, &dest, &bars)?;
            println!("unpacked {name} into {} ({stats:?})", dest.display());
        }
        ImageCommand::Pull {
            reference,
            insecure,
        } => {
            let store = Store::open_default()?;
            let d = registry::pull(&store, &reference, insecure, &bars)?;
            println!("pulled {reference} ({d})");
        }
    }
    Ok(0)
}
