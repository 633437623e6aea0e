//! `tagmem-vmm client`: one request to a running VMM's API socket, like `ch-remote`.

use crate::{ClientArgs, ClientRequest, Failure};
use tagmem_vmm::api::{self, ReleaseTaggedMemory};
use tagmem_vmm::config::{self, ApiSocketConfig, OptionError, TaggedMemoryConfig};
use uuid::Uuid;

pub(crate) fn client(args: ClientArgs) -> Result<(), Failure> {
    let socket = ApiSocketConfig::parse(&args.api_socket)
        .map_err(|e| Failure::usage(OptionError::new("--api-socket", e)))?
        .path;
    let (method, path, body) = match &args.request {
        ClientRequest::Ping => ("GET", api::PING, None),
        ClientRequest::TaggedMemory => ("GET", api::TAGGED_MEMORY, None),
        ClientRequest::Memory => ("GET", api::MEMORY, None),
        ClientRequest::Resize { desired_ram } => {
            let desired_ram = config::parse_size("desired_ram", desired_ram)
                .map_err(|e| Failure::usage(OptionError::new("--desired-ram", e)))?;
            let body = serde_json::to_string(&api::VmResize { desired_ram })
                .map_err(|e| Failure::runtime(format!("encoding the request: {e}")))?;
            ("PUT", api::RESIZE, Some(body))
        }
        ClientRequest::AddTaggedMemory { extents } => {
            let configs = extents
                .iter()
                .map(|s| TaggedMemoryConfig::parse(s))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| Failure::usage(OptionError::new("add-tagged-memory", e)))?;
            let body = serde_json::to_string(&api::AddTaggedMemory { extents: configs })
                .map_err(|e| Failure::runtime(format!("encoding the request: {e}")))?;
            ("PUT", api::ADD_TAGGED_MEMORY, Some(body))
        }
        ClientRequest::ReleaseTaggedMemory { tag, extent } => {
            let req = match (tag, extent) {
                (Some(t), _) => ReleaseTaggedMemory {
                    tag: Some(
                        Uuid::parse_str(t).map_err(|_| Failure::usage(format!("--tag {t}: not a UUID")))?,
                    ),
                    extent_id: None,
                },
                (None, Some(n)) => ReleaseTaggedMemory {
                    tag: None,
                    extent_id: Some(n.parse().map_err(|_| {
                        Failure::usage(format!("--extent {n}: not an extent id (a decimal number)"))
                    })?),
                },
                (None, None) => return Err(Failure::usage("give --tag or --extent")),
            };
            let body = serde_json::to_string(&req)
                .map_err(|e| Failure::runtime(format!("encoding the request: {e}")))?;
            ("PUT", api::RELEASE_TAGGED_MEMORY, Some(body))
        }
    };
    let (status, answer) = api::call(&socket, method, path, body.as_deref()).map_err(Failure::runtime)?;
    if (200..300).contains(&status) {
        if !answer.is_empty() {
            println!("{}", api::pretty_json(&answer));
        }
        Ok(())
    } else {
        let message = serde_json::from_str::<serde_json::Value>(&answer)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or(answer);
        Err(Failure::runtime(format!("{path}: {status}: {message}")))
    }
}
