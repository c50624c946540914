//! This notifier's own record of what it delivered (redb), so an event
//! delivered again after a crash does not notify a channel twice. Local
//! state only: it can be lost at the price of possible repeats.

use std::path::Path;

use redb::{Database, ReadableDatabase, TableDefinition};

const DELIVERED: TableDefinition<&str, u64> = TableDefinition::new("delivered");

pub struct Store {
    db: Database,
}

impl Store {
    pub fn open(path: &Path) -> Result<Store, String> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let db = Database::create(path)
            .map_err(|e| format!("cannot open the delivery record {}: {e}", path.display()))?;
        // Create the table so reads never fail on a fresh file.
        let tx = db.begin_write().map_err(|e| e.to_string())?;
        tx.open_table(DELIVERED).map_err(|e| e.to_string())?;
        tx.commit().map_err(|e| e.to_string())?;
        Ok(Store { db })
    }

    fn key(event: &str, channel: &str) -> String {
        format!("{event}|{channel}")
    }

    pub fn delivered(&self, event: &str, channel: &str) -> bool {
        let read = || -> Result<bool, redb::Error> {
            let tx = self.db.begin_read()?;
            let t = tx.open_table(DELIVERED)?;
            Ok(t.get(Self::key(event, channel).as_str())?.is_some())
        };
        read().unwrap_or(false)
    }

    pub fn mark(&self, event: &str, channel: &str, at_ms: u64) -> Result<(), String> {
        let write = || -> Result<(), redb::Error> {
            let tx = self.db.begin_write()?;
            {
                let mut t = tx.open_table(DELIVERED)?;
                t.insert(Self::key(event, channel).as_str(), at_ms)?;
            }
            tx.commit()?;
            Ok(())
        };
        write().map_err(|e| format!("recording a delivery: {e}"))
    }
}
