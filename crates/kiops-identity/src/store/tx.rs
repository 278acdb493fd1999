//! Transactions as the layers above see them: a write transaction that
//! commits with a domain error, and a read-only snapshot for a page and its
//! total. Both roll back when dropped uncommitted.

use super::db_err;
use crate::domain::DomainError;
use sea_orm::{
    ConnectionTrait, DatabaseTransaction, DbBackend, DbErr, ExecResult, QueryResult, Statement,
};

/// One write transaction (`Store::begin_write`). The store's functions take
/// it as any connection; the use case that opened it ends it with `commit`.
#[derive(Debug)]
pub struct WriteTx(DatabaseTransaction);

/// A read-only snapshot (`Store::begin_listing`).
#[derive(Debug)]
pub struct ReadTx(DatabaseTransaction);

impl WriteTx {
    pub(super) fn new(tx: DatabaseTransaction) -> Self {
        Self(tx)
    }

    pub async fn commit(self) -> Result<(), DomainError> {
        self.0.commit().await.map_err(db_err)
    }
}

impl ReadTx {
    pub(super) fn new(tx: DatabaseTransaction) -> Self {
        Self(tx)
    }

    /// Ends the snapshot (a read-only transaction has nothing to keep).
    pub async fn close(self) -> Result<(), DomainError> {
        self.0.commit().await.map_err(db_err)
    }
}

macro_rules! delegate_connection {
    ($t:ty) => {
        #[async_trait::async_trait]
        impl ConnectionTrait for $t {
            fn get_database_backend(&self) -> DbBackend {
                self.0.get_database_backend()
            }
            async fn execute_raw(&self, stmt: Statement) -> Result<ExecResult, DbErr> {
                self.0.execute_raw(stmt).await
            }
            async fn execute_unprepared(&self, sql: &str) -> Result<ExecResult, DbErr> {
                self.0.execute_unprepared(sql).await
            }
            async fn query_one_raw(&self, stmt: Statement) -> Result<Option<QueryResult>, DbErr> {
                self.0.query_one_raw(stmt).await
            }
            async fn query_all_raw(&self, stmt: Statement) -> Result<Vec<QueryResult>, DbErr> {
                self.0.query_all_raw(stmt).await
            }
            fn support_returning(&self) -> bool {
                self.0.support_returning()
            }
        }
    };
}

delegate_connection!(WriteTx);
delegate_connection!(ReadTx);
