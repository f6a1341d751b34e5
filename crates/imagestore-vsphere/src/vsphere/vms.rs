//! Virtual machines and their disks: which VMs use an image's disk (through the property
//! collector, over a container view of every VM), and VIC's ImageJoin: attaching a new child
//! disk of an image's disk to a VM, and detaching (and destroying) it again.

use imagestore_core::{Error, ObjectKind, Result};
use roxmltree::Node;

use super::VsphereDatastore;
use super::soap::BACKEND;
use super::xml::{self, MoRef, child, child_text, children, text, xsi_type};
use crate::datastore::DsPath;

/// SCSI controller types a disk can be attached to.
const SCSI_CONTROLLERS: &[&str] = &[
    "ParaVirtualSCSIController",
    "VirtualLsiLogicController",
    "VirtualLsiLogicSASController",
    "VirtualBusLogicController",
];

/// A virtual disk of a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmDisk {
    /// The device key.
    pub key: i64,
    /// The controller's key.
    pub controller: i64,
    /// The unit on the controller.
    pub unit: i64,
    /// The disk's backing file, then its parents' (`[ds] path`), top first.
    pub chain: Vec<String>,
    /// The backing's disk mode.
    pub mode: String,
}

/// A VM with its disks and SCSI controllers.
#[derive(Debug, Clone)]
pub struct Vm {
    /// The VM's name.
    pub name: String,
    /// Its reference.
    pub moref: MoRef,
    /// Its virtual disks.
    pub disks: Vec<VmDisk>,
    /// Keys of its SCSI controllers.
    pub controllers: Vec<i64>,
    /// `(controller, unit)` pairs in use by any device.
    pub units: Vec<(i64, i64)>,
}

/// A child disk an image's disk was joined to a VM with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinedDisk {
    /// The VM's name.
    pub vm: String,
    /// The disk device's key in the VM.
    pub key: i64,
    /// The child disk (`[ds] path`).
    pub file: String,
    /// Its parent, the image's disk (`[ds] path`).
    pub parent: String,
}

fn int(node: Node<'_, '_>, name: &str) -> Option<i64> {
    child_text(node, name)?.parse().ok()
}

/// The backing file names of a disk backing and its parents, top first.
fn backing_chain(backing: Node<'_, '_>) -> Vec<String> {
    let mut out = Vec::new();
    let mut at = Some(backing);
    while let Some(b) = at {
        if let Some(f) = child_text(b, "fileName") {
            out.push(f);
        }
        at = child(b, "parent");
    }
    out
}

/// The VMs in one `RetrievePropertiesEx` answer.
fn parse_vms(body: &str, endpoint: &imagestore_core::Url) -> Result<(Vec<Vm>, Option<String>)> {
    let doc = xml::parse(body).map_err(|e| super::soap::bad_xml(endpoint, e))?;
    let root = doc.root_element();
    let rv = xml::find(root, "returnval");
    let token = rv.and_then(|r| child_text(r, "token"));
    let mut vms = Vec::new();
    for obj in rv.into_iter().flat_map(|r| children(r, "objects")) {
        let Some(moref) = child(obj, "obj").and_then(MoRef::of) else {
            continue;
        };
        let mut vm = Vm {
            name: moref.value.clone(),
            moref,
            disks: Vec::new(),
            controllers: Vec::new(),
            units: Vec::new(),
        };
        for ps in children(obj, "propSet") {
            let (Some(name), Some(val)) = (child_text(ps, "name"), child(ps, "val")) else {
                continue;
            };
            match name.as_str() {
                "name" => vm.name = text(val),
                "config.hardware.device" => {
                    for d in val.children().filter(|c| c.is_element()) {
                        let kind = xsi_type(d).unwrap_or_default();
                        let key = int(d, "key").unwrap_or_default();
                        if SCSI_CONTROLLERS.contains(&kind) {
                            vm.controllers.push(key);
                        }
                        let (ctrl, unit) = (int(d, "controllerKey"), int(d, "unitNumber"));
                        if let (Some(c), Some(u)) = (ctrl, unit) {
                            vm.units.push((c, u));
                        }
                        if kind == "VirtualDisk"
                            && let Some(b) = child(d, "backing")
                        {
                            vm.disks.push(VmDisk {
                                key,
                                controller: ctrl.unwrap_or_default(),
                                unit: unit.unwrap_or_default(),
                                chain: backing_chain(b),
                                mode: child_text(b, "diskMode")
                                    .unwrap_or_else(|| "persistent".into()),
                            });
                        }
                    }
                }
                _ => {}
            }
        }
        vms.push(vm);
    }
    Ok((vms, token))
}

/// Every VM of the inventory with its disks.
pub fn list(ds: &VsphereDatastore) -> Result<Vec<Vm>> {
    let soap = &ds.soap;
    let body = format!(
        "<CreateContainerView>{}{}<type>VirtualMachine</type><recursive>true</recursive></CreateContainerView>",
        xml::moref("_this", &ds.service.view_manager),
        xml::moref("container", &ds.service.root_folder)
    );
    let view = Soap::returnval(&soap.call_ok(&body, "the VM inventory")?).ok_or_else(|| {
        Error::backend(BACKEND, "creating a container view answered no view", false)
    })?;
    let collector = xml::moref("_this", &soap.property_collector());
    let r = (|| {
        let body = format!(
            "<RetrievePropertiesEx>{collector}<specSet><propSet><type>VirtualMachine</type>\
             <pathSet>name</pathSet><pathSet>config.hardware.device</pathSet></propSet>\
             <objectSet>{}<skip>true</skip><selectSet xsi:type=\"TraversalSpec\">\
             <name>traverseEntities</name><type>ContainerView</type><path>view</path>\
             <skip>false</skip></selectSet></objectSet></specSet><options/></RetrievePropertiesEx>",
            xml::moref("obj", &view)
        );
        let (mut vms, mut token) =
            parse_vms(&soap.call_ok(&body, "the VM inventory")?, soap.endpoint())?;
        while let Some(t) = token.take() {
            let body = format!(
                "<ContinueRetrievePropertiesEx>{collector}{}</ContinueRetrievePropertiesEx>",
                xml::el("token", &t)
            );
            let (more, next) =
                parse_vms(&soap.call_ok(&body, "the VM inventory")?, soap.endpoint())?;
            vms.extend(more);
            token = next;
        }
        Ok(vms)
    })();
    let _ = soap.call(&format!(
        "<DestroyView>{}</DestroyView>",
        xml::moref("_this", &view)
    ));
    r
}

use super::soap::Soap;

/// The backing element of a disk at `file` (`[ds] path`) over the chain `parents` (top first).
fn backing_xml(file: &str, mode: &str, parents: &[String]) -> String {
    let mut parent = String::new();
    for p in parents.iter().rev() {
        parent = format!(
            "<parent>{}{}{parent}</parent>",
            xml::el("fileName", p),
            xml::el("diskMode", mode)
        );
    }
    format!(
        "<backing xsi:type=\"VirtualDiskFlatVer2BackingInfo\">{}{}<thinProvisioned>true</thinProvisioned>{parent}</backing>",
        xml::el("fileName", file),
        xml::el("diskMode", mode)
    )
}

impl VsphereDatastore {
    fn vm(&self, name: &str) -> Result<Vm> {
        list(self)?
            .into_iter()
            .find(|v| v.name == name)
            .ok_or_else(|| Error::not_found(ObjectKind::Owner, format!("VM {name}")))
    }

    fn reconfigure(&self, vm: &Vm, change: &str) -> Result<()> {
        let body = format!(
            "<ReconfigVM_Task>{}<spec><deviceChange>{change}</deviceChange></spec></ReconfigVM_Task>",
            xml::moref("_this", &vm.moref)
        );
        self.soap
            .run_task_ok(&body, &format!("reconfiguring VM {}", vm.name))
            .map(|_| ())
    }

    /// VIC's ImageJoin: attaches to VM `vm` a new thin disk `child`, a child of the disk at
    /// `parent` (an image's disk), created by vSphere on the first free unit of the VM's first
    /// SCSI controller. The VM then uses the image (it shows among its owners).
    pub fn join_disk(&self, vm: &str, parent: &DsPath, child: &DsPath) -> Result<JoinedDisk> {
        let v = self.vm(vm)?;
        let controller = *v.controllers.first().ok_or_else(|| {
            Error::invalid(format!(
                "VM {vm} has no SCSI controller to attach a disk to"
            ))
        })?;
        let unit = (0..16)
            .filter(|u| *u != 7)
            .find(|u| !v.units.contains(&(controller, *u)))
            .ok_or_else(|| Error::invalid(format!("VM {vm} has no free SCSI unit")))?;
        let (file, parent_file) = (self.ds_path(child), self.ds_path(parent));
        self.mkdir_all(&self.ds_path(&child.parent()))?;
        let device = format!(
            "<operation>add</operation><fileOperation>create</fileOperation>\
             <device xsi:type=\"VirtualDisk\"><key>-1</key>{}<controllerKey>{controller}</controllerKey>\
             <unitNumber>{unit}</unitNumber><capacityInKB>{}</capacityInKB></device>",
            backing_xml(&file, "persistent", std::slice::from_ref(&parent_file)),
            self.config.options.capacity_kib
        );
        self.reconfigure(&v, &device)?;
        let key = self
            .vm(vm)?
            .disks
            .into_iter()
            .find(|d| d.chain.first() == Some(&file))
            .map(|d| d.key)
            .ok_or_else(|| {
                Error::backend(
                    BACKEND,
                    format!("VM {vm} does not show the joined disk {file}"),
                    false,
                )
            })?;
        Ok(JoinedDisk {
            vm: vm.to_owned(),
            key,
            file,
            parent: parent_file,
        })
    }

    /// Detaches a joined disk from its VM and destroys the child disk; the image's disk stays.
    pub fn leave_disk(&self, joined: &JoinedDisk) -> Result<()> {
        let v = self.vm(&joined.vm)?;
        let Some(d) = v.disks.iter().find(|d| d.key == joined.key) else {
            return Err(Error::not_found(
                ObjectKind::Owner,
                format!("disk {} of VM {}", joined.file, joined.vm),
            ));
        };
        if d.chain.first() != Some(&joined.file) {
            return Err(Error::invalid(format!(
                "device {} of VM {} is not {}",
                joined.key, joined.vm, joined.file
            )));
        }
        // The whole device as the VM has it: the server takes the files to destroy from it.
        let device = format!(
            "<operation>remove</operation><fileOperation>destroy</fileOperation>\
             <device xsi:type=\"VirtualDisk\"><key>{}</key>{}<controllerKey>{}</controllerKey>\
             <unitNumber>{}</unitNumber></device>",
            d.key,
            backing_xml(&joined.file, &d.mode, &d.chain[1..]),
            d.controller,
            d.unit
        );
        self.reconfigure(&v, &device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disks_and_their_parents_are_read_from_the_device_list() -> Result<()> {
        let body = r#"<RetrievePropertiesExResponse xmlns="urn:vim25"><returnval><objects><obj type="VirtualMachine">vm-57</obj><propSet><name>name</name><val xmlns:X="http://www.w3.org/2001/XMLSchema-instance" X:type="xsd:string">DC0_H0_VM0</val></propSet><propSet><name>config.hardware.device</name><val xmlns:X="http://www.w3.org/2001/XMLSchema-instance" X:type="ArrayOfVirtualDevice"><VirtualDevice X:type="ParaVirtualSCSIController"><key>202</key><busNumber>0</busNumber></VirtualDevice><VirtualDevice X:type="VirtualDisk"><key>203</key><backing X:type="VirtualDiskFlatVer2BackingInfo"><fileName>[ds] j/j.vmdk</fileName><diskMode>persistent</diskMode><parent><fileName>[ds] img/img.vmdk</fileName></parent></backing><controllerKey>202</controllerKey><unitNumber>1</unitNumber></VirtualDevice></val></propSet></objects><token>t1</token></returnval></RetrievePropertiesExResponse>"#;
        let url = imagestore_core::Url::parse("http://x/sdk")
            .map_err(|e| Error::invalid(e.to_string()))?;
        let (vms, token) = parse_vms(body, &url)?;
        assert_eq!(token.as_deref(), Some("t1"));
        assert_eq!(vms.len(), 1);
        assert_eq!(vms[0].name, "DC0_H0_VM0");
        assert_eq!(vms[0].controllers, vec![202]);
        assert_eq!(vms[0].units, vec![(202, 1)]);
        assert_eq!(
            vms[0].disks[0].chain,
            vec!["[ds] j/j.vmdk".to_owned(), "[ds] img/img.vmdk".to_owned()]
        );
        let b = backing_xml(
            "[ds] j/j.vmdk",
            "persistent",
            &["[ds] img/img.vmdk".to_owned()],
        );
        assert!(b.contains("<parent><fileName>[ds] img/img.vmdk</fileName>"));
        Ok(())
    }
}
